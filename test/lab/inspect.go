package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/podmesh/podmesh/pkg/agentstatus"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PodmeshRouteProtocol tags every route podmesh-agent installs (see
// pkg/datapath); the lab's own routes use proto static.
const PodmeshRouteProtocol = 150

// AgentStatus is podmesh-agent's /status JSON, as the agent defines it
// (package agentstatus), with the raw document kept for logs.
type AgentStatus struct {
	agentstatus.Report
	// Raw is the whole document, for logs.
	Raw json.RawMessage `json:"-"`
}

// MeshStatus, DatapathStatus and RemoteStatus are the agent's own types.
type (
	MeshStatus     = agentstatus.Mesh
	DatapathStatus = agentstatus.Datapath
	RemoteStatus   = agentstatus.Remote
)

// Remote returns the status of one remote cluster, or nil.
func (s *AgentStatus) Remote(cluster string) *RemoteStatus {
	for k := range s.Mesh.Remotes {
		if s.Mesh.Remotes[k].Cluster == cluster {
			return &s.Mesh.Remotes[k]
		}
	}
	return nil
}

// AgentStatus fetches the agent's /status JSON from inside the node.
func (l *Lab) AgentStatus(ctx context.Context, n *Node) (*AgentStatus, error) {
	st, err := FetchAgentStatus(ctx, n.NetNS, n.StatusAddr())
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	return st, nil
}

// FetchAgentStatus fetches /status from an agent listening on addr inside
// the named namespace.
func FetchAgentStatus(ctx context.Context, netnsName, addr string) (*AgentStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := HTTPClientIn(netnsName).Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent status: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var st AgentStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	st.Raw = body
	return &st, nil
}

// netlinkIn opens a netlink handle bound to the named namespace.
func netlinkIn(netnsName string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(NetNSPath(netnsName))
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsName, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", netnsName, err)
	}
	return h, nil
}

// dumpRetry runs a netlink dump again, a few times, while the kernel
// reports it interrupted by a concurrent change.
func dumpRetry[T any](dump func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for range 5 {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return out, err
}

// PodReady reports whether pod p runs, is Ready and is not being deleted.
func PodReady(p *corev1.Pod) bool { return podReady(p) }

// Route is one podmesh route found in a node's namespace.
type Route struct {
	Prefix netip.Prefix
	Via    netip.Addr
	Dev    string
	MTU    int
}

// PodmeshRoutes lists the routes podmesh-agent installed in the node's
// namespace (protocol PodmeshRouteProtocol), by prefix.
func PodmeshRoutes(netnsName string) (map[netip.Prefix]Route, error) {
	h, err := netlinkIn(netnsName)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	routes, err := dumpRetry(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(unix.AF_UNSPEC, &netlink.Route{Protocol: PodmeshRouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes in %s: %w", netnsName, err)
	}
	links := map[int]string{}
	out := make(map[netip.Prefix]Route, len(routes))
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		addr, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		bits, _ := r.Dst.Mask.Size()
		pr := Route{Prefix: netip.PrefixFrom(addr.Unmap(), bits), MTU: r.MTU}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			pr.Via = gw.Unmap()
		}
		if r.LinkIndex > 0 {
			name, ok := links[r.LinkIndex]
			if !ok {
				if lk, err := h.LinkByIndex(r.LinkIndex); err == nil {
					name = lk.Attrs().Name
				}
				links[r.LinkIndex] = name
			}
			pr.Dev = name
		}
		out[pr.Prefix] = pr
	}
	return out, nil
}

// ExpectedPrefixes is what node n should route for its configured remotes:
// every pod CIDR of their nodes, and a host prefix for every pod whose IP
// lies inside its cluster's pod range but outside its node's pod CIDRs (a
// pool node's pods), as listed from the remotes' API servers now.
func (l *Lab) ExpectedPrefixes(ctx context.Context, n *Node, remotes []*Cluster) (map[netip.Prefix]netip.Addr, error) {
	hosts, err := l.hostPrefixes(ctx, remotes)
	if err != nil {
		return nil, err
	}
	return expectedPrefixes(remotes, hosts), nil
}

// expectedPrefixes is ExpectedPrefixes with the remotes' host prefixes
// already listed (hostPrefixes).
func expectedPrefixes(remotes []*Cluster, hosts map[*Cluster]map[netip.Prefix]netip.Addr) map[netip.Prefix]netip.Addr {
	want := map[netip.Prefix]netip.Addr{}
	for _, r := range remotes {
		for _, m := range r.NodeList() {
			for _, c := range m.PodCIDRs() {
				want[c] = m.IP
			}
		}
		maps.Copy(want, hosts[r])
	}
	return want
}

// hostPrefixes lists, per cluster, the pods a clustermesh-apiserver
// publishes outside their node's pod CIDRs: not host-network, not
// finished, an IP inside the cluster's pod range but outside the pod
// CIDRs of the node it runs on; each as a host prefix via that node.
func (l *Lab) hostPrefixes(ctx context.Context, clusters []*Cluster) (map[*Cluster]map[netip.Prefix]netip.Addr, error) {
	out := map[*Cluster]map[netip.Prefix]netip.Addr{}
	for _, c := range clusters {
		nodes := map[string]*Node{}
		for _, m := range c.NodeList() {
			nodes[m.Name] = m
		}
		list, err := c.Kube.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("cluster %s: list pods: %w", c.Name, err)
		}
		hosts := map[netip.Prefix]netip.Addr{}
		for _, p := range list.Items {
			m := nodes[p.Spec.NodeName]
			if m == nil || p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			for _, pip := range p.Status.PodIPs {
				ip, err := netip.ParseAddr(pip.IP)
				if err != nil || !slices.ContainsFunc(c.PodCIDRs, func(r netip.Prefix) bool { return r.Contains(ip) }) ||
					slices.ContainsFunc(m.PodCIDRs(), func(r netip.Prefix) bool { return r.Contains(ip) }) {
					continue
				}
				hosts[netip.PrefixFrom(ip, ip.BitLen())] = m.IP
			}
		}
		out[c] = hosts
	}
	return out, nil
}

// Remotes returns the clusters whose config is in the node's mesh config.
func (l *Lab) Remotes(n *Node) []*Cluster {
	l.mu.Lock()
	names := slices.Clone(n.remotes)
	l.mu.Unlock()
	var out []*Cluster
	for _, c := range l.Clusters() {
		if slices.Contains(names, c.Name) && c != n.Cluster {
			out = append(out, c)
		}
	}
	return out
}

// CheckNode compares one node's podmesh routes (and, in ebpf mode, its
// ipcache) with what it should have for the given remotes and reports what
// is missing or extra (nil when equal).
func (l *Lab) CheckNode(ctx context.Context, n *Node, remotes []*Cluster) error {
	want, err := l.ExpectedPrefixes(ctx, n, remotes)
	if err != nil {
		return err
	}
	return checkNode(n, remotes, want)
}

// checkNode is CheckNode with the expected prefixes given.
func checkNode(n *Node, remotes []*Cluster, want map[netip.Prefix]netip.Addr) error {
	have, err := PodmeshRoutes(n.NetNS)
	if err != nil {
		return err
	}
	routes := want
	if n.Mode == ModeEBPF {
		// One route per remote cluster pod CIDR to the tunnel device; the
		// program forwards by the ipcache (checked below).
		routes = map[netip.Prefix]netip.Addr{}
		for _, r := range remotes {
			for _, c := range r.PodCIDRs {
				routes[c] = netip.Addr{}
			}
		}
	}
	var missing, extra []string
	for p, via := range routes {
		r, ok := have[p]
		if !ok {
			missing = append(missing, p.String())
			continue
		}
		switch n.Mode {
		case ModeNative:
			if r.Via != via {
				missing = append(missing, fmt.Sprintf("%s via %s (have via %s)", p, via, r.Via))
			}
		case ModeVXLAN:
			if gw := vxlanGateway(p, via); r.Via != gw || r.Dev != TunnelDevice {
				missing = append(missing, fmt.Sprintf("%s via %s dev %s (have via %s dev %s)", p, gw, TunnelDevice, r.Via, r.Dev))
			}
		case ModeEBPF:
			if r.Dev != TunnelDevice {
				missing = append(missing, fmt.Sprintf("%s dev %s (have dev %s)", p, TunnelDevice, r.Dev))
			}
		}
	}
	for p := range have {
		if _, ok := routes[p]; !ok {
			extra = append(extra, p.String())
		}
	}
	if n.Mode == ModeEBPF {
		// The eBPF program forwards by the ipcache, not by the route's
		// next hop: it must hold every prefix with the right tunnel endpoint.
		cache, err := ReadIPCache(n.BPFRoot)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		for p, via := range want {
			e, ok := cache[p]
			switch {
			case !ok:
				missing = append(missing, "ipcache "+p.String())
			case e.TunnelEndpoint != via:
				missing = append(missing, fmt.Sprintf("ipcache %s -> %s (have -> %s)", p, via, e.TunnelEndpoint))
			}
		}
		for p := range cache {
			if _, ok := want[p]; !ok {
				extra = append(extra, "ipcache "+p.String())
			}
		}
	}
	if n.Mode == ModeVXLAN {
		m, x, err := checkTunnelPeers(n.NetNS, want)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		missing, extra = append(missing, m...), append(extra, x...)
	}
	if len(missing) == 0 && len(extra) == 0 {
		return nil
	}
	sort.Strings(missing)
	sort.Strings(extra)
	return fmt.Errorf("node %s: routes missing %v, extra %v", n.Name, missing, extra)
}

// WaitConverged waits until every node's agent reports every configured
// remote ready and every node routes exactly the remote prefixes it should.
func (l *Lab) WaitConverged(ctx context.Context, timeout time.Duration) error {
	nodes := l.Nodes()
	return waitFor(ctx, timeout, 200*time.Millisecond, "mesh convergence", func() (bool, error) {
		hosts, err := l.hostPrefixes(ctx, l.Clusters())
		if err != nil {
			return false, err
		}
		var errs []error
		for _, n := range nodes {
			if exited, err := n.Kubelet.Exited(); exited {
				return false, permanent{fmt.Errorf("kubelet on %s exited: %v; log tail:\n%s", n.Name, err, TailLog(n.LogPath, 20))}
			}
			remotes := l.Remotes(n)
			st, err := l.AgentStatus(ctx, n)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, r := range remotes {
				rs := st.Remote(r.Name)
				switch {
				case rs == nil:
					errs = append(errs, fmt.Errorf("node %s: no status for %s", n.Name, r.Name))
				case !rs.Ready:
					errs = append(errs, fmt.Errorf("node %s: %s not ready: %s %s", n.Name, r.Name, rs.Reason, rs.LastError))
				}
			}
			if err := checkNode(n, remotes, expectedPrefixes(remotes, hosts)); err != nil {
				if dp := st.Datapath; dp != nil && (dp.LastError != "" || len(dp.Failed) > 0) {
					err = fmt.Errorf("%w (agent datapath: failed %v, last error %q)", err, dp.Failed, dp.LastError)
				}
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return false, errors.Join(errs...)
		}
		return true, nil
	})
}

// PodRef names a pod for probing: its network namespace (a path
// /proc/<pid>/ns/net of one of its processes) and addresses.
type PodRef struct {
	Cluster string
	Name    string
	// Node is the name of the node the pod runs on.
	Node  string
	NetNS string
	IP    netip.Addr
	// IP6 is set in a dual-stack lab.
	IP6 netip.Addr
}

func (p PodRef) String() string { return p.Cluster + "/" + p.Name }

// MatrixCell is one probe of the connectivity matrix.
type MatrixCell struct {
	From, To PodRef
	Seen     netip.AddrPort
	RTT      time.Duration
	Err      error
}

// OK reports whether the connection worked and the receiver saw the
// sender's pod IP (no NAT, no masquerade on the way).
func (c MatrixCell) OK() bool { return c.Err == nil && c.Seen.Addr() == c.From.IP }

// Matrix probes every pod from every pod of the other clusters (TCP connect,
// read the source address the receiver saw), a few in parallel.
func Matrix(ctx context.Context, pods []PodRef) []MatrixCell {
	var cells []MatrixCell
	for _, from := range pods {
		for _, to := range pods {
			if from.Cluster != to.Cluster {
				cells = append(cells, MatrixCell{From: from, To: to})
			}
		}
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for k := range cells {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c := &cells[k]
			res, err := Probe(ctx, c.From.NetNS, netip.AddrPortFrom(c.To.IP, ServeTCPPort), 5*time.Second)
			c.Seen, c.RTT, c.Err = res.Seen, res.RTT, err
		})
	}
	wg.Wait()
	return cells
}

// MatrixErrors returns one error per failed cell, joined (nil when all ok).
func MatrixErrors(cells []MatrixCell) error {
	var errs []error
	for _, c := range cells {
		if c.Err != nil {
			errs = append(errs, fmt.Errorf("%s -> %s (%s): %w", c.From, c.To, c.To.IP, c.Err))
		} else if !c.OK() {
			errs = append(errs, fmt.Errorf("%s -> %s: receiver saw %s, want %s", c.From, c.To, c.Seen.Addr(), c.From.IP))
		}
	}
	return errors.Join(errs...)
}

// AsIPv6 returns the pods with their IPv6 address in IP, so Matrix probes
// over IPv6; pods without one are left out.
func AsIPv6(pods []PodRef) []PodRef {
	var out []PodRef
	for _, p := range pods {
		if p.IP6.IsValid() {
			p.IP = p.IP6
			out = append(out, p)
		}
	}
	return out
}

// metricLineRE matches one sample of the Prometheus text format with a
// cluster label: name{...cluster="c2"...} value.
var metricLineRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}\s+(\S+)`)

var clusterLabelRE = regexp.MustCompile(`(?:^|,)cluster="([^"]*)"`)

// AgentCounters reads one per-cluster metric (a counter or gauge with a
// "cluster" label) from the agent's /metrics, by cluster.
func (l *Lab) AgentCounters(ctx context.Context, n *Node, metric string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.StatusAddr()+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := HTTPClientIn(n.NetNS).Do(req)
	if err != nil {
		return nil, fmt.Errorf("node %s: metrics: %w", n.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("node %s: metrics: HTTP %d", n.Name, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := metricLineRE.FindStringSubmatch(sc.Text())
		if m == nil || m[1] != metric {
			continue
		}
		c := clusterLabelRE.FindStringSubmatch(m[2])
		if c == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			return nil, fmt.Errorf("node %s: metric %s: %w", n.Name, metric, err)
		}
		out[c[1]] += v
	}
	return out, sc.Err()
}

// TunnelDevice is the device podmesh-agent creates in the tunnel modes
// (vxlan, ebpf); see pkg/datapath.
const TunnelDevice = "podmesh_vxlan"

// tunnelMAC is the MAC address of a node's vxlan-mode tunnel device as
// pkg/datapath documents it: 0e:70 and the four bytes of the node's IPv4
// underlay address (the lab's underlay is IPv4). Computed here, not taken
// from the datapath package, so the lab checks the documented contract.
func tunnelMAC(endpoint netip.Addr) net.HardwareAddr {
	b := endpoint.Unmap().As4()
	return net.HardwareAddr{0x0e, 0x70, b[0], b[1], b[2], b[3]}
}

// vxlanGateway is the on-link gateway of a vxlan-mode route to prefix p
// through the node at endpoint: the endpoint itself for an IPv4 prefix
// (over the IPv4 underlay), the EUI-64 link-local address of the
// endpoint's tunnel MAC for an IPv6 prefix.
func vxlanGateway(p netip.Prefix, endpoint netip.Addr) netip.Addr {
	if p.Addr().Is4() {
		return endpoint
	}
	mac := tunnelMAC(endpoint)
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	b[8], b[9], b[10] = mac[0]^0x02, mac[1], mac[2]
	b[11], b[12] = 0xff, 0xfe
	b[13], b[14], b[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(b)
}

// TunnelPeers is what a vxlan-mode node holds on its tunnel device for its
// peers: the permanent neighbour entries (gateway -> MAC) and the permanent
// FDB entries (MAC -> underlay endpoint).
type TunnelPeers struct {
	Neigh map[netip.Addr]string
	FDB   map[string]netip.Addr
}

// ReadTunnelPeers lists the permanent neighbour and FDB entries on the
// tunnel device in the named namespace (none when there is no device).
func ReadTunnelPeers(netnsName string) (TunnelPeers, error) {
	st, err := ReadTunnelState(netnsName)
	if err != nil {
		return TunnelPeers{}, err
	}
	return st.Peers(), nil
}

// tunnelPeersWanted is what vxlan mode programs for the wanted prefixes
// (prefix -> endpoint): per gateway a neighbour entry with the endpoint's
// tunnel MAC, per endpoint an FDB entry sending that MAC to it. An
// endpoint that is not IPv4 (the lab's underlay) is listed in bad.
func tunnelPeersWanted(want map[netip.Prefix]netip.Addr) (neigh map[netip.Addr]string, fdb map[string]netip.Addr, bad []string) {
	neigh, fdb = map[netip.Addr]string{}, map[string]netip.Addr{}
	for p, ep := range want {
		if !ep.Unmap().Is4() {
			bad = append(bad, fmt.Sprintf("prefix %s via %s: the lab's underlay is IPv4", p, ep))
			continue
		}
		mac := tunnelMAC(ep).String()
		neigh[vxlanGateway(p, ep)] = mac
		fdb[mac] = ep
	}
	return neigh, fdb, bad
}

// checkTunnelPeers compares a vxlan-mode node's neighbour and FDB entries
// with what its routes to the wanted prefixes (prefix -> endpoint) need:
// per gateway a neighbour entry with the endpoint's tunnel MAC, per
// endpoint an FDB entry sending that MAC to the endpoint, nothing else.
func checkTunnelPeers(netnsName string, want map[netip.Prefix]netip.Addr) (missing, extra []string, err error) {
	have, err := ReadTunnelPeers(netnsName)
	if err != nil {
		return nil, nil, err
	}
	neigh, fdb, bad := tunnelPeersWanted(want)
	missing = append(missing, bad...)
	m, x := diffEntries("neigh %s lladdr %s", neigh, have.Neigh)
	missing, extra = append(missing, m...), append(extra, x...)
	m, x = diffEntries("fdb %s dst %s", fdb, have.FDB)
	missing, extra = append(missing, m...), append(extra, x...)
	return missing, extra, nil
}

// diffEntries describes (with format, taking key and value) the entries of
// want that have lacks or holds with another value, and those have holds
// beyond want.
func diffEntries[K, V comparable](format string, want, have map[K]V) (missing, extra []string) {
	for k, v := range want {
		if h, ok := have[k]; !ok || h != v {
			missing = append(missing, fmt.Sprintf(format+" (have %v)", k, v, h))
		}
	}
	for k, v := range have {
		if _, ok := want[k]; !ok {
			extra = append(extra, fmt.Sprintf(format, k, v))
		}
	}
	return missing, extra
}

// ForeignRoutes lists every route of every table in the named namespace
// that podmesh-agent did not install (protocol other than
// PodmeshRouteProtocol), one line each, sorted: what podmesh must never
// touch.
func ForeignRoutes(netnsName string) ([]string, error) {
	h, err := netlinkIn(netnsName)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	routes, err := dumpRetry(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(unix.AF_UNSPEC, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes in %s: %w", netnsName, err)
	}
	var out []string
	for _, r := range routes {
		if r.Protocol != PodmeshRouteProtocol {
			out = append(out, fmt.Sprintf("%s proto %d", r, r.Protocol))
		}
	}
	sort.Strings(out)
	return out, nil
}
