package datapath_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

// Privileged tests: each builds two simulated clusters of two nodes with one
// pod per node in namespaces it creates (see datapathtest), runs one
// Reconciler per node, and removes everything in cleanup.

const (
	identPort      = 7000
	recheck        = 200 * time.Millisecond
	convergeWithin = 10 * time.Second
	dialTimeout    = 3 * time.Second
	// unreachableTimeout bounds a dial expected to fail.
	unreachableTimeout = time.Second
)

var modes = []string{datapath.ModeNative, datapath.ModeVXLAN, datapath.ModeEBPF}

func forEachMode(t *testing.T, fn func(t *testing.T, mode string)) {
	testutils.RequireRoot(t)
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { fn(t, mode) })
	}
}

// mesh is cluster A (ID 1: a1 10.1.0.0/24, a2 10.1.1.0/24) and cluster B
// (ID 2: b1 10.2.0.0/24, b2 10.2.1.0/24), one pod .10 per node.
type mesh struct {
	t              *testing.T
	mode           string
	lab            *datapathtest.Lab
	a1, a2, b1, b2 *datapathtest.Node
	desired        map[*datapathtest.Node]*datapath.Desired
	bpfRoot        map[*datapathtest.Node]string
	running        map[*datapathtest.Node]*running
}

func newMesh(t *testing.T, mode string, opts datapathtest.LabOptions) *mesh {
	t.Helper()
	m := &mesh{t: t, mode: mode, desired: map[*datapathtest.Node]*datapath.Desired{},
		bpfRoot: map[*datapathtest.Node]string{}, running: map[*datapathtest.Node]*running{}}
	// Every mode gets a private bpf root: non-ebpf modes remove an ebpf
	// datapath left under it, and the default (/sys/fs/bpf/podmesh) is the
	// host's.
	root := datapathtest.BPFRoot(t)
	m.lab = datapathtest.NewLab(t, opts)
	m.a1 = m.lab.AddNode("a1", "a", 1, "10.1.0.0/24")
	m.a2 = m.lab.AddNode("a2", "a", 1, "10.1.1.0/24")
	m.b1 = m.lab.AddNode("b1", "b", 2, "10.2.0.0/24")
	m.b2 = m.lab.AddNode("b2", "b", 2, "10.2.1.0/24")
	for _, n := range m.lab.Nodes {
		n.AddPod(podIP(n))
		d := datapath.NewDesired()
		var remote []*datapathtest.Node
		for _, o := range m.lab.Nodes {
			if o.Cluster != n.Cluster {
				remote = append(remote, o)
			}
		}
		var entries []datapath.Entry
		for _, o := range remote {
			entries = append(entries, datapath.Entry{Prefix: o.PodCIDR, TunnelEndpoint: o.IP, ClusterID: o.ClusterID, Cluster: o.Cluster})
		}
		d.SetCluster(remote[0].Cluster, clusterCIDRs(remote[0].Cluster), entries)
		m.desired[n] = d
		m.bpfRoot[n] = root + "/" + n.Name
	}
	return m
}

// clusterCIDRs are the pod CIDRs cluster a (10.1.0.0/16) and cluster b
// (10.2.0.0/16) declare in their cluster-config.
func clusterCIDRs(cluster string) []netip.Prefix {
	return map[string][]netip.Prefix{
		"a": {netip.MustParsePrefix("10.1.0.0/16")},
		"b": {netip.MustParsePrefix("10.2.0.0/16")},
	}[cluster]
}

// routed is the prefix a1's kernel routes for node n: n's pod CIDR, or in
// ebpf mode the pod CIDR n's cluster declares (one route per cluster; the
// ipcache holds the per-node detail).
func (m *mesh) routed(n *datapathtest.Node) netip.Prefix {
	if m.mode == datapath.ModeEBPF {
		return clusterCIDRs(n.Cluster)[0]
	}
	return n.PodCIDR
}

// podIP is the .10 of the node's pod CIDR.
func podIP(n *datapathtest.Node) string {
	a := n.PodCIDR.Addr().As4()
	a[3] = 10
	return netip.AddrFrom4(a).String()
}

func (m *mesh) pod(n *datapathtest.Node) *datapathtest.Pod { return n.Pods[0] }

func (m *mesh) config(n *datapathtest.Node) datapath.Config {
	log := logrus.New()
	log.Out = io.Discard
	if os.Getenv("PODMESH_TEST_LOG") != "" {
		log.Out = os.Stderr
		log.Level = logrus.DebugLevel
	}
	return datapath.Config{
		Mode:            m.mode,
		LocalIP:         n.IP,
		BPFRoot:         m.bpfRoot[n],
		LocalClusterID:  n.ClusterID,
		RecheckInterval: recheck,
		Desired:         m.desired[n],
		Log:             log.WithField("node", n.Name),
		NetNS:           n.NS.Path,
	}
}

// running is one Reconciler's Run.
type running struct {
	r      *datapath.Reconciler
	cancel context.CancelFunc
	done   chan error
}

func (m *mesh) start(n *datapathtest.Node) *running {
	m.t.Helper()
	r, err := datapath.New(m.config(n))
	require.NoError(m.t, err, "new reconciler on %s", n.Name)
	return m.runReconciler(n, r)
}

func (m *mesh) runReconciler(n *datapathtest.Node, r *datapath.Reconciler) *running {
	ctx, cancel := context.WithCancel(context.Background())
	rr := &running{r: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	m.running[n] = rr
	m.t.Cleanup(func() { rr.stop(m.t) })
	return rr
}

func (rr *running) stop(t *testing.T) {
	rr.cancel()
	select {
	case err, ok := <-rr.done:
		if ok {
			assert.NoError(t, err, "Run returned an error")
			close(rr.done)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("reconciler did not stop")
	}
}

func (m *mesh) startAll() {
	for _, n := range m.lab.Nodes {
		m.start(n)
	}
	for _, n := range m.lab.Nodes {
		m.waitApplied(n)
	}
}

// waitApplied waits until n's reconciler has fully realised the current
// version of its desired set.
func (m *mesh) waitApplied(n *datapathtest.Node) {
	m.t.Helper()
	want := m.desired[n].Version()
	rr := m.running[n]
	waitFor(m.t, convergeWithin, func() bool { return rr.r.Status().AppliedVersion >= want },
		func() string { return "reconciler of " + n.Name + " did not converge: " + statusString(rr.r.Status()) })
}

// assertFullPassWritesNothing waits for the next periodic full pass of each
// node's reconciler and checks that it wrote nothing: every kernel object
// reads back exactly as it was written, so a converged node is not churned.
func (m *mesh) assertFullPassWritesNothing(nodes ...*datapathtest.Node) {
	m.t.Helper()
	for _, n := range nodes {
		rr := m.running[n]
		since := rr.r.Status().LastReconcile
		waitFor(m.t, convergeWithin, func() bool {
			s := rr.r.Status()
			return s.LastPass == "full" && s.LastReconcile.After(since)
		}, func() string { return "no periodic full pass on " + n.Name })
		assert.Zero(m.t, rr.r.Status().LastWrites, "%s: a full pass over a converged kernel rewrote objects", n.Name)
	}
}

func statusString(s datapath.Status) string {
	return fmt.Sprintf("last error: %s; per prefix: %v", s.LastError, s.Errors)
}

// waitFor waits until cond holds, failing the test with msg's account of
// the last state when it does not within the given time.
func waitFor(t *testing.T, within time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		if !cond() {
			c.Errorf("condition not met: %s", msg())
		}
	}, within, 10*time.Millisecond)
}

func (m *mesh) identServers() {
	for _, n := range m.lab.Nodes {
		for _, p := range n.Pods {
			datapathtest.StartIdentServer(m.t, p, identPort)
		}
	}
}

func to(p *datapathtest.Pod, port int) netip.AddrPort { return netip.AddrPortFrom(p.IP, uint16(port)) }

func TestPodToRemotePodTCPAndUDPKeepTheSourcePodIP(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		m := newMesh(t, mode, datapathtest.LabOptions{})
		m.identServers()
		m.startAll()
		for _, pair := range [][2]*datapathtest.Node{{m.a1, m.b1}, {m.a1, m.b2}, {m.a2, m.b1}, {m.b2, m.a2}, {m.b1, m.a1}} {
			src, dst := m.pod(pair[0]), m.pod(pair[1])
			got, err := datapathtest.TCPIdent(src, to(dst, identPort), dialTimeout)
			require.NoError(t, err, "tcp %s -> %s", src.Name, dst.Name)
			assert.Equal(t, src.IP, got, "tcp: receiver sees the sender's pod IP")
			got, err = datapathtest.UDPIdent(src, to(dst, identPort), dialTimeout)
			require.NoError(t, err, "udp %s -> %s", src.Name, dst.Name)
			assert.Equal(t, src.IP, got, "udp: receiver sees the sender's pod IP")
		}
		for _, n := range m.lab.Nodes {
			s := m.running[n].r.Status()
			assert.Equal(t, mode, s.Mode)
			assert.Empty(t, s.Failed)
			remote := "b"
			if n.Cluster == "b" {
				remote = "a"
			}
			assert.Equal(t, map[string]int{remote: 2}, s.Programmed, "%s programs both remote node CIDRs", n.Name)
			v, err := n.NS.ReadSysctl("net.ipv4.ip_forward")
			require.NoError(t, err)
			assert.Equal(t, "1", v, "the reconciler enabled forwarding on %s", n.Name)
		}
		m.assertFullPassWritesNothing(m.lab.Nodes...)

		// In the tunnel modes the traffic really went through podmesh_vxlan.
		vx, err := m.a1.NS.NL.LinkByName(datapath.DeviceName)
		if mode == datapath.ModeNative {
			require.Error(t, err, "native mode creates no tunnel device")
		} else {
			require.NoError(t, err)
			assert.Positive(t, vx.Attrs().Statistics.TxPackets, "a1 sent through %s", datapath.DeviceName)
			assert.Equal(t, 1450, vx.Attrs().MTU)
		}

		// The metrics say the same.
		got := gather(t, m.running[m.a1].r)
		assert.Equal(t, 2.0, got["podmesh_datapath_prefixes_programmed,cluster=b"], "%v", got)
		assert.Positive(t, got["podmesh_datapath_convergence_seconds"], "convergence latency observed: %v", got)
		assert.Zero(t, got["podmesh_datapath_reconcile_errors_total"])

		if mode == datapath.ModeEBPF {
			// The datapath counted what a1 sent to cluster B.
			s := m.running[m.a1].r.Status()
			waitFor(t, convergeWithin, func() bool {
				s = m.running[m.a1].r.Status()
				return s.Traffic[2].Packets > 0
			}, func() string { return "no tx counted for cluster 2" })
			assert.Positive(t, s.Traffic[2].Bytes)
			got := gather(t, m.running[m.a1].r)
			assert.Positive(t, got["podmesh_datapath_tx_packets_total,cluster=b,cluster_id=2"], "%v", got)
			assert.Positive(t, got["podmesh_datapath_tx_bytes_total,cluster=b,cluster_id=2"], "%v", got)

			// Traffic routed to the device for a prefix the ipcache does not
			// hold is dropped and counted as a miss.
			require.NoError(t, m.a1.NS.NL.RouteAdd(&netlink.Route{Dst: ipnet("10.77.0.0/24"), LinkIndex: vx.Attrs().Index, Scope: netlink.SCOPE_LINK, Protocol: unix.RTPROT_STATIC}))
			u, err := m.pod(m.a1).Dial("udp", netip.MustParseAddrPort("10.77.0.5:9"), dialTimeout)
			require.NoError(t, err)
			defer u.Close()
			waitFor(t, convergeWithin, func() bool {
				u.Write([]byte("x"))
				return m.running[m.a1].r.Status().Drops["miss"].Packets > 0
			}, func() string { return "no ipcache miss counted" })
			assert.Positive(t, gather(t, m.running[m.a1].r)["podmesh_datapath_drops_total,reason=miss"])
		}
	})
}

// gather collects r's metrics into "name,label=value,..." → value (sample
// count for histograms).
func gather(t *testing.T, r *datapath.Reconciler) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, c := range r.Collectors() {
		require.NoError(t, reg.Register(c))
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range mt.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case mt.GetGauge() != nil:
				got[key] = mt.GetGauge().GetValue()
			case mt.GetCounter() != nil:
				got[key] = mt.GetCounter().GetValue()
			case mt.GetHistogram() != nil:
				got[key] = float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	return got
}

func TestEndpointEntryWinsOverItsNodeCIDRAndChangesApplyInOneReconcile(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		m := newMesh(t, mode, datapathtest.LabOptions{})
		// A pod whose IP comes from b1's CIDR but which lives on b2, as with
		// IPAM that does not carve pod IPs out of per-node CIDRs.
		stray := m.b2.AddPod("10.2.0.77")
		datapathtest.StartIdentServer(t, stray, identPort)
		m.startAll()
		src := m.pod(m.a1)

		// Negative checks use a short timeout: b1 answers with "net
		// unreachable", but in the tunnel modes that ICMP error (sourced
		// from b1's underlay address, arriving on podmesh_vxlan) is dropped
		// by a1's strict rp_filter, so the dial times out instead.
		_, err := datapathtest.TCPIdent(src, to(stray, identPort), unreachableTimeout)
		require.Error(t, err, "without the /32 the node CIDR sends 10.2.0.77 to b1, which has no such pod")

		ep := datapath.Entry{Prefix: netip.MustParsePrefix("10.2.0.77/32"), TunnelEndpoint: m.b2.IP, ClusterID: 2, Cluster: "b"}
		m.desired[m.a1].Upsert(ep)
		m.waitApplied(m.a1)
		got, err := datapathtest.TCPIdent(src, to(stray, identPort), dialTimeout)
		require.NoError(t, err, "the /32 entry wins over b1's /24 as soon as it is applied")
		assert.Equal(t, src.IP, got)
		got, err = datapathtest.UDPIdent(src, to(stray, identPort), dialTimeout)
		require.NoError(t, err)
		assert.Equal(t, src.IP, got)

		m.desired[m.a1].Delete("b", ep.Prefix)
		m.waitApplied(m.a1)
		_, err = datapathtest.TCPIdent(src, to(stray, identPort), unreachableTimeout)
		require.Error(t, err, "removing the /32 (added by this reconciler, so removable before prune is allowed) sends traffic back to b1")
		routes := routesTo(t, m.a1, ep.Prefix)
		assert.Empty(t, routes, "the /32 route is gone")

		// Adding a whole prefix makes a new range reachable.
		m.desired[m.a1].Upsert(ep)
		m.waitApplied(m.a1)
		_, err = datapathtest.TCPIdent(src, to(stray, identPort), dialTimeout)
		require.NoError(t, err)
	})
}

func routesTo(t *testing.T, n *datapathtest.Node, p netip.Prefix) []netlink.Route {
	t.Helper()
	fam := unix.AF_INET
	if p.Addr().Is6() {
		fam = unix.AF_INET6
	}
	routes, err := n.NS.NL.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		routes, err = n.NS.NL.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	}
	require.NoError(t, err)
	var out []netlink.Route
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == p.String() {
			out = append(out, r)
		}
	}
	return out
}

func ipnet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestDriftIsRepairedAndPruneRemovesOnlyPodmeshRoutes(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		m := newMesh(t, mode, datapathtest.LabOptions{})
		m.identServers()
		h := m.a1.NS.NL
		eth, err := h.LinkByName("eth0")
		require.NoError(t, err)

		// Left behind by a previous agent: a podmesh route the new desired
		// set does not hold (yet).
		stale := netlink.Route{Dst: ipnet("10.3.0.0/24"), Gw: m.b1.IP.AsSlice(), Protocol: datapath.RouteProtocol, Table: unix.RT_TABLE_MAIN}
		require.NoError(t, h.RouteAdd(&stale))
		// Someone else's routes in the same table: one next to podmesh's and
		// one under a podmesh-looking name.
		foreign := netlink.Route{Dst: ipnet("10.99.0.0/24"), Gw: net.ParseIP("192.168.77.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC, Table: unix.RT_TABLE_MAIN}
		require.NoError(t, h.RouteAdd(&foreign))

		m.startAll()
		assert.Len(t, routesTo(t, m.a1, netip.MustParsePrefix("10.3.0.0/24")), 1, "before every remote synced, nothing found in the kernel is withdrawn")

		m.desired[m.a1].AllowPrune()
		m.waitApplied(m.a1)
		assert.Empty(t, routesTo(t, m.a1, netip.MustParsePrefix("10.3.0.0/24")), "prune removes the stale podmesh route")
		fr := routesTo(t, m.a1, netip.MustParsePrefix("10.99.0.0/24"))
		require.Len(t, fr, 1, "prune keeps the foreign route")
		assert.Equal(t, netlink.RouteProtocol(unix.RTPROT_STATIC), fr[0].Protocol)

		// A podmesh route deleted by hand comes back with the next full
		// pass, which counts it as out of sync.
		target := netip.MustParsePrefix("10.2.0.0/24")
		route := m.routed(m.b1)
		rs := routesTo(t, m.a1, route)
		require.Len(t, rs, 1)
		outOfSync := m.running[m.a1].r.Status().OutOfSyncTotal
		require.NoError(t, h.RouteDel(&rs[0]))
		require.Empty(t, routesTo(t, m.a1, route))
		waitFor(t, convergeWithin, func() bool { return len(routesTo(t, m.a1, route)) == 1 },
			func() string { return "route " + route.String() + " not repaired" })
		assert.Equal(t, datapath.RouteProtocol, routesTo(t, m.a1, route)[0].Protocol)
		waitFor(t, convergeWithin, func() bool { return m.running[m.a1].r.Status().OutOfSyncTotal > outOfSync },
			func() string { return "the repair was not counted as out of sync" })

		switch mode {
		case datapath.ModeVXLAN:
			// The neighbour and FDB entries are repaired too.
			vx, err := h.LinkByName(datapath.DeviceName)
			require.NoError(t, err)
			nb := netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_INET, IP: m.b1.IP.AsSlice()}
			require.NoError(t, h.NeighDel(&nb))
			fdb := netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: m.b1.IP.AsSlice(), HardwareAddr: datapath.TunnelMAC(m.b1.IP)}
			require.NoError(t, h.NeighDel(&fdb))
			waitFor(t, convergeWithin, func() bool {
				ns, _ := h.NeighList(vx.Attrs().Index, unix.AF_INET)
				fs, _ := h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
				return hasNeigh(ns, m.b1.IP, datapath.TunnelMAC(m.b1.IP)) && hasNeigh(fs, m.b1.IP, datapath.TunnelMAC(m.b1.IP))
			}, func() string { return "neighbour/fdb of b1 not repaired" })
		case datapath.ModeEBPF:
			repairIpcacheEntry(t, m, target)
			detachProgramAndWaitForRepair(t, m)
		}
		got, err := datapathtest.TCPIdent(m.pod(m.a1), to(m.pod(m.b1), identPort), dialTimeout)
		require.NoError(t, err, "traffic flows after the repair")
		assert.Equal(t, m.pod(m.a1).IP, got)

		if mode != datapath.ModeNative {
			// The tunnel device itself deleted by hand: device, routes (and
			// in ebpf mode the program attachment) come back.
			vx, err := h.LinkByName(datapath.DeviceName)
			require.NoError(t, err)
			require.NoError(t, h.LinkDel(vx))
			waitFor(t, convergeWithin, func() bool {
				l, err := h.LinkByName(datapath.DeviceName)
				return err == nil && l.Attrs().Index != vx.Attrs().Index && len(routesTo(t, m.a1, route)) == 1
			}, func() string { return datapath.DeviceName + " and its routes not repaired" })
			got, err := datapathtest.TCPIdent(m.pod(m.a1), to(m.pod(m.b1), identPort), dialTimeout)
			require.NoError(t, err, "traffic flows through the recreated device")
			assert.Equal(t, m.pod(m.a1).IP, got)
		}

		// The foreign route is still there after all of it.
		assert.Len(t, routesTo(t, m.a1, netip.MustParsePrefix("10.99.0.0/24")), 1)
	})
}

func hasNeigh(ns []netlink.Neigh, ip netip.Addr, mac net.HardwareAddr) bool {
	for _, n := range ns {
		a, _ := netip.AddrFromSlice(n.IP)
		if a.Unmap() == ip && n.HardwareAddr.String() == mac.String() && n.State&netlink.NUD_PERMANENT != 0 {
			return true
		}
	}
	return false
}

func TestPathMTUDiscoveryAndFullSizeTCP(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		// Tunnel modes: 1500 underlay, 1450 inside the tunnel. Native has no
		// encapsulation, so its underlay is made smaller than the pods'
		// 1500 to give it a path MTU to discover.
		opts := datapathtest.LabOptions{UnderlayMTU: 1500}
		wantMTU := 1450
		if mode == datapath.ModeNative {
			opts.UnderlayMTU, wantMTU = 1400, 1400
		}
		m := newMesh(t, mode, opts)
		m.identServers()
		m.startAll()

		rs := routesTo(t, m.a1, m.routed(m.b1))
		require.Len(t, rs, 1)
		assert.Equal(t, wantMTU, rs[0].MTU, "the remote prefix route carries the tunnel MTU")

		// A DF datagram of 1500 bytes from a 1500-MTU pod draws "fragmentation
		// needed" from the node, which the pod's socket learns as path MTU.
		src, dst := m.pod(m.a1), m.pod(m.b1)
		c, err := src.Dial("udp", to(dst, identPort), dialTimeout)
		require.NoError(t, err)
		defer c.Close()
		sc, err := c.(*net.UDPConn).SyscallConn()
		require.NoError(t, err)
		require.NoError(t, controlErr(sc, func(fd int) error {
			return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		}))
		big := make([]byte, 1500-28)
		pmtu := 0
		sawEMSGSIZE := false
		waitFor(t, convergeWithin, func() bool {
			if _, err := c.Write(big); errors.Is(err, unix.EMSGSIZE) {
				sawEMSGSIZE = true
			}
			_ = controlErr(sc, func(fd int) error {
				var err error
				pmtu, err = unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
				return err
			})
			return pmtu == wantMTU && sawEMSGSIZE
		}, func() string { return "path MTU not learnt" })

		// A 1 MiB TCP stream between 1500-MTU pods completes, both ways (echo).
		conn, err := src.Dial("tcp", to(dst, identPort), dialTimeout)
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
		line := make([]byte, len(src.IP.String())+1)
		_, err = io.ReadFull(conn, line)
		require.NoError(t, err)
		payload := make([]byte, 1<<20)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		werr := make(chan error, 1)
		go func() { _, err := conn.Write(payload); werr <- err }()
		back := make([]byte, len(payload))
		_, err = io.ReadFull(conn, back)
		require.NoError(t, err, "read echo of 1 MiB")
		require.NoError(t, <-werr)
		assert.Equal(t, payload, back, "1 MiB echoed intact")

		// The underlay MTU changes (Config.MTU is 0, so it is followed):
		// the next periodic full pass rewrites the route (and device) MTUs.
		eth, err := m.a1.NS.NL.LinkByName("eth0")
		require.NoError(t, err)
		require.NoError(t, m.a1.NS.NL.LinkSetMTU(eth, opts.UnderlayMTU-100))
		waitFor(t, convergeWithin, func() bool {
			rs := routesTo(t, m.a1, m.routed(m.b1))
			return len(rs) == 1 && rs[0].MTU == wantMTU-100
		}, func() string { return "route MTU did not follow the underlay MTU" })
		if mode != datapath.ModeNative {
			vx, err := m.a1.NS.NL.LinkByName(datapath.DeviceName)
			require.NoError(t, err)
			assert.Equal(t, wantMTU-100, vx.Attrs().MTU, "device MTU follows the underlay MTU")
		}
	})
}

func controlErr(sc interface{ Control(func(uintptr)) error }, fn func(fd int) error) error {
	var ferr error
	if err := sc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// TestModeSwitchReplacesRoutesAndRemovesLeftoversOncePruneIsAllowed runs a1
// in ebpf mode, then restarts it in native mode with the same bpf root: the
// routes are replaced at once, the ebpf device and pins go only after
// AllowPrune. (Only a1's own kernel objects are checked: the other nodes are
// not started, as a mesh must run one mode.)
func TestModeSwitchReplacesRoutesAndRemovesLeftoversOncePruneIsAllowed(t *testing.T) {
	testutils.RequireRoot(t)
	m := newMesh(t, datapath.ModeEBPF, datapathtest.LabOptions{})
	m.start(m.a1)
	m.waitApplied(m.a1)
	pins, err := os.ReadDir(m.bpfRoot[m.a1])
	require.NoError(t, err)
	require.NotEmpty(t, pins, "ebpf mode pinned its maps")
	m.running[m.a1].stop(t)

	// native: routes replaced at once; device and pins stay until prune is allowed.
	m.mode = datapath.ModeNative
	m.desired[m.a1] = datapath.NewDesired()
	m.desired[m.a1].SetCluster("b", clusterCIDRs("b"), []datapath.Entry{
		{Prefix: m.b1.PodCIDR, TunnelEndpoint: m.b1.IP, ClusterID: 2, Cluster: "b"},
		{Prefix: m.b2.PodCIDR, TunnelEndpoint: m.b2.IP, ClusterID: 2, Cluster: "b"},
	})
	m.start(m.a1)
	m.waitApplied(m.a1)
	rs := routesTo(t, m.a1, m.b1.PodCIDR)
	require.Len(t, rs, 1)
	assert.Equal(t, m.b1.IP, ipOf(rs[0].Gw), "native route replaced the ebpf one")
	_, err = m.a1.NS.NL.LinkByName(datapath.DeviceName)
	require.NoError(t, err, "the tunnel device stays while prune is not allowed")
	_, err = os.Stat(m.bpfRoot[m.a1])
	require.NoError(t, err, "the pins stay while prune is not allowed")

	m.desired[m.a1].AllowPrune()
	m.waitApplied(m.a1)
	_, err = m.a1.NS.NL.LinkByName(datapath.DeviceName)
	require.Error(t, err, "native mode removed the ebpf device once prune was allowed")
	_, err = os.Stat(m.bpfRoot[m.a1])
	require.True(t, os.IsNotExist(err), "native mode removed the ebpf pins once prune was allowed: %v", err)
	assert.Len(t, routesTo(t, m.a1, m.b1.PodCIDR), 1, "the native routes survived the cleanup")
}

func ipOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func TestAFailingObjectDoesNotBlockTheOthersAndShowsInStatus(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		m := newMesh(t, mode, datapathtest.LabOptions{})
		m.identServers()
		bad := netip.MustParsePrefix("10.2.7.0/24")
		e := datapath.Entry{Prefix: bad, TunnelEndpoint: m.b1.IP, ClusterID: 2, Cluster: "b"}
		if mode == datapath.ModeEBPF {
			// The ipcache holds cluster IDs up to bpf.MaxClusterID only.
			e.ClusterID = 999
		} else {
			// A route podmesh did not create holds the prefix.
			eth, err := m.a1.NS.NL.LinkByName("eth0")
			require.NoError(t, err)
			foreign := netlink.Route{Dst: ipnet(bad.String()), Gw: net.ParseIP("192.168.77.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC, Table: unix.RT_TABLE_MAIN}
			require.NoError(t, m.a1.NS.NL.RouteAdd(&foreign))
		}
		m.desired[m.a1].Upsert(e)
		for _, n := range m.lab.Nodes {
			m.start(n)
		}
		for _, n := range []*datapathtest.Node{m.a2, m.b1, m.b2} {
			m.waitApplied(n)
		}
		rr := m.running[m.a1]
		waitFor(t, convergeWithin, func() bool {
			s := rr.r.Status()
			return s.Errors[bad.String()] != "" && s.Programmed["b"] == 2
		}, func() string { return statusString(rr.r.Status()) })
		s := rr.r.Status()
		assert.Equal(t, map[string]int{"b": 1}, s.Failed)
		assert.Len(t, s.Errors, 1, "only the failing object is in error")
		t.Logf("status error of %s: %s", bad, s.Errors[bad.String()])
		got, err := datapathtest.TCPIdent(m.pod(m.a1), to(m.pod(m.b1), identPort), dialTimeout)
		require.NoError(t, err, "the other objects carry traffic")
		assert.Equal(t, m.pod(m.a1).IP, got)
		if mode != datapath.ModeEBPF {
			rs := routesTo(t, m.a1, bad)
			require.Len(t, rs, 1)
			assert.Equal(t, netlink.RouteProtocol(unix.RTPROT_STATIC), rs[0].Protocol, "the foreign route is left alone")
		}
	})
}
