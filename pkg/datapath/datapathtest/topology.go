// Package datapathtest builds small simulated multi-cluster topologies out of
// network namespaces for the datapath's privileged tests and benchmarks:
// node namespaces on one underlay bridge (in its own namespace), and pods as
// namespaces behind a simulated CNI (a veth per pod and a /32 route on the
// node, ptp style: the pod's default route points at 169.254.1.1, an address
// every host-side veth carries).
//
// Every namespace is created with a random name, and removed by the cleanup
// of the T that created it, also when the test fails. Nothing here touches
// the caller's own namespace: links, addresses, routes and sysctls are set
// only inside the namespaces created here, through netlink handles bound to
// them or a locked thread switched into them.
package datapathtest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/internal/netnsutil"
)

// T is the part of testing.TB the helpers need; a benchmark harness outside
// `go test` can implement it.
type T interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// RandomSuffix returns 8 random hex characters.
func RandomSuffix() string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// NS is a named network namespace created for a test.
type NS struct {
	Name   string
	Path   string // /var/run/netns/<Name>, usable as datapath.Config.NetNS
	Handle netns.NsHandle
	NL     *netlink.Handle // netlink handle bound to the namespace
}

// NewNS creates a named namespace "pmt-<name>-<random>" without moving the
// caller into it, and removes it in t's cleanup.
func NewNS(t T, name string) *NS {
	t.Helper()
	full := "pmt-" + name + "-" + RandomSuffix()
	if len(full) > 60 {
		full = full[:60]
	}
	var h netns.NsHandle
	err := netnsutil.OnLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		// NewNamed unshares the calling thread into the new namespace.
		h, err = netns.NewNamed(full)
		if rerr := netns.Set(orig); rerr != nil {
			return errors.Join(err, fmt.Errorf("restore netns: %w", rerr))
		}
		return err
	})
	if err != nil {
		t.Fatalf("create netns %s: %v", full, err)
	}
	ns := &NS{Name: full, Path: filepath.Join("/var/run/netns", full), Handle: h}
	t.Cleanup(func() {
		if ns.NL != nil {
			ns.NL.Close()
		}
		ns.Handle.Close()
		if err := netns.DeleteNamed(full); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Logf("delete netns %s: %v", full, err)
		}
	})
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", full, err)
	}
	ns.NL = nl
	// No duplicate address detection: addresses are usable at once, so
	// tests need not wait for IPv6 addresses to leave the tentative state.
	for _, s := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		if err := ns.Sysctl(s, "0"); err != nil {
			t.Fatalf("%v", err)
		}
	}
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("set lo up in %s: %v", full, err)
	}
	return ns
}

// Do runs fn on a thread inside the namespace. Sockets fn opens stay in the
// namespace after Do returns.
func (n *NS) Do(fn func() error) error {
	if err := netnsutil.Do(n.Handle, fn); err != nil {
		return fmt.Errorf("in netns %s: %w", n.Name, err)
	}
	return nil
}

// Sysctl sets a sysctl inside the namespace.
func (n *NS) Sysctl(name, value string) error {
	return n.Do(func() error {
		p := filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("set %s in %s: %w", name, n.Name, err)
		}
		return nil
	})
}

// ReadSysctl reads a sysctl inside the namespace.
func (n *NS) ReadSysctl(name string) (string, error) {
	var v string
	err := n.Do(func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// LabOptions shape a Lab.
type LabOptions struct {
	// UnderlayMTU is the MTU of the underlay links (default 1500).
	UnderlayMTU int
	// PodMTU is the MTU of pod links (default 1500).
	PodMTU int
	// IPv6 gives nodes an IPv6 underlay address too (Node.IP6, in
	// UnderlayPrefix6), besides the IPv4 one.
	IPv6 bool
}

// Lab is an underlay bridge with nodes and pods.
type Lab struct {
	t        T
	opts     LabOptions
	Underlay *NS
	bridge   netlink.Link
	Nodes    []*Node
}

// UnderlayPrefix is the underlay subnet; node i gets .(i+1).
var UnderlayPrefix = netip.MustParsePrefix("192.168.77.0/24")

// UnderlayPrefix6 is the IPv6 underlay subnet (LabOptions.IPv6); node i gets ::(i+1).
var UnderlayPrefix6 = netip.MustParsePrefix("fd00:77::/64")

// PodGateway is the address every host-side pod veth carries; PodGateway6 the
// IPv6 one (link-local).
var (
	PodGateway  = netip.MustParseAddr("169.254.1.1")
	PodGateway6 = netip.MustParseAddr("fe80::1")
)

// Node is a simulated node.
type Node struct {
	Name      string
	Cluster   string
	ClusterID uint32
	NS        *NS
	IP        netip.Addr
	IP6       netip.Addr // invalid unless LabOptions.IPv6
	PodCIDR   netip.Prefix
	Pods      []*Pod
	lab       *Lab
}

// Pod is a simulated pod.
type Pod struct {
	Name     string
	NS       *NS
	IP       netip.Addr   // the first address
	IPs      []netip.Addr // all addresses
	Node     *Node
	HostVeth string
}

// NewLab creates the underlay namespace and bridge.
func NewLab(t T, opts LabOptions) *Lab {
	t.Helper()
	if opts.UnderlayMTU == 0 {
		opts.UnderlayMTU = 1500
	}
	if opts.PodMTU == 0 {
		opts.PodMTU = 1500
	}
	l := &Lab{t: t, opts: opts, Underlay: NewNS(t, "underlay")}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: opts.UnderlayMTU}}
	h := l.Underlay.NL
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("create underlay bridge: %v", err)
	}
	link, err := h.LinkByName("br0")
	if err == nil {
		err = h.LinkSetUp(link)
	}
	if err != nil {
		t.Fatalf("set underlay bridge up: %v", err)
	}
	l.bridge = link
	return l
}

// AddNode creates a node of cluster on the underlay with pod CIDR podCIDR
// (informational: the simulated CNI routes per pod). Nodes get strict
// rp_filter, as many distributions configure, so tests see its effect.
func (l *Lab) AddNode(name, cluster string, clusterID uint32, podCIDR string) *Node {
	t := l.t
	t.Helper()
	idx := len(l.Nodes) + 1
	ip := UnderlayPrefix.Addr()
	for range idx {
		ip = ip.Next()
	}
	n := &Node{Name: name, Cluster: cluster, ClusterID: clusterID, NS: NewNS(t, name), IP: ip, PodCIDR: netip.MustParsePrefix(podCIDR), lab: l}
	h := n.NS.NL
	peer := fmt.Sprintf("u%d", idx)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: l.opts.UnderlayMTU}, PeerName: peer, PeerMTU: uint32(l.opts.UnderlayMTU)}); err != nil {
		t.Fatalf("create underlay veth of %s: %v", name, err)
	}
	must(t, moveLink(h, peer, l.Underlay), "move %s to underlay", peer)
	ul, err := l.Underlay.NL.LinkByName(peer)
	must(t, err, "find %s", peer)
	must(t, l.Underlay.NL.LinkSetMaster(ul, l.bridge), "enslave %s", peer)
	must(t, l.Underlay.NL.LinkSetUp(ul), "set %s up", peer)
	eth, err := h.LinkByName("eth0")
	must(t, err, "find eth0 of %s", name)
	must(t, h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(UnderlayPrefix.Bits(), 32)}}), "address %s", name)
	if l.opts.IPv6 {
		ip6 := UnderlayPrefix6.Addr()
		for range idx {
			ip6 = ip6.Next()
		}
		n.IP6 = ip6
		must(t, h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: ip6.AsSlice(), Mask: net.CIDRMask(UnderlayPrefix6.Bits(), 128)}, Flags: unix.IFA_F_NODAD}), "address %s", name)
	}
	must(t, h.LinkSetUp(eth), "set eth0 of %s up", name)
	for _, s := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter", "net.ipv4.conf.eth0.rp_filter"} {
		must(t, n.NS.Sysctl(s, "1"), "strict rp_filter on %s", name)
	}
	l.Nodes = append(l.Nodes, n)
	return n
}

// AddPod creates a pod with the given addresses (usually inside the node's
// pod CIDRs; tests place IPs elsewhere to simulate IPAM without per-node
// CIDRs). IPv4 and IPv6 addresses may be mixed; each gets a host route on
// the node and the pod a default route of its family.
func (n *Node) AddPod(ips ...string) *Pod {
	t := n.lab.t
	t.Helper()
	idx := len(n.Pods) + 1
	p := &Pod{Name: fmt.Sprintf("%s-pod%d", n.Name, idx), Node: n, HostVeth: fmt.Sprintf("pv%d", idx)}
	for _, s := range ips {
		p.IPs = append(p.IPs, netip.MustParseAddr(s))
	}
	if len(p.IPs) == 0 {
		t.Fatalf("pod %s without addresses", p.Name)
	}
	p.IP = p.IPs[0]
	p.NS = NewNS(t, p.Name)
	h := n.NS.NL
	tmp := fmt.Sprintf("pt%d", idx)
	mtu := n.lab.opts.PodMTU
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.HostVeth, MTU: mtu}, PeerName: tmp, PeerMTU: uint32(mtu)}); err != nil {
		t.Fatalf("create pod veth %s: %v", p.Name, err)
	}
	must(t, moveLink(h, tmp, p.NS), "move %s into %s", tmp, p.Name)

	// Pod side: eth0 with host addresses, default routes via the gateways.
	ph := p.NS.NL
	pl, err := ph.LinkByName(tmp)
	must(t, err, "find %s", tmp)
	must(t, ph.LinkSetName(pl, "eth0"), "rename pod veth")
	must(t, ph.LinkSetUp(pl), "set pod eth0 up")
	hl, err := h.LinkByName(p.HostVeth)
	must(t, err, "find %s", p.HostVeth)
	must(t, h.LinkSetUp(hl), "set %s up", p.HostVeth)
	has4, has6 := false, false
	for _, a := range p.IPs {
		bits := a.BitLen()
		must(t, ph.AddrAdd(pl, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Flags: nodad(a)}), "address pod")
		must(t, h.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Scope: netlink.SCOPE_LINK}), "pod route")
		if a.Is4() {
			has4 = true
		} else {
			has6 = true
		}
	}
	if has4 {
		gw := PodGateway.AsSlice()
		must(t, ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}), "pod gateway route")
		must(t, ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw}), "pod default route")
		must(t, h.AddrAdd(hl, &netlink.Addr{IPNet: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}), "gateway address")
	}
	if has6 {
		gw := PodGateway6.AsSlice()
		must(t, h.AddrAdd(hl, &netlink.Addr{IPNet: &net.IPNet{IP: gw, Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}), "gateway address")
		must(t, ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw, Family: unix.AF_INET6, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}), "pod default route")
	}
	n.Pods = append(n.Pods, p)
	return p
}

func nodad(a netip.Addr) int {
	if a.Is6() {
		return unix.IFA_F_NODAD
	}
	return 0
}

func moveLink(h *netlink.Handle, name string, to *NS) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	return h.LinkSetNsFd(l, int(to.Handle))
}

func must(t T, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// BPFRoot returns a fresh directory for pins, removed in cleanup:
// /sys/fs/bpf/podmesh-test-<random> when /sys/fs/bpf is a bpffs; otherwise the
// same name inside a private bpffs instance mounted on a temporary directory
// (the host's /sys/fs/bpf is never mounted or touched).
func BPFRoot(t T) string {
	t.Helper()
	base := "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(base, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		tmp, err := os.MkdirTemp("", "podmesh-bpffs-")
		must(t, err, "temp dir for bpffs")
		must(t, unix.Mount("bpffs", tmp, "bpf", 0, "mode=0700"), "mount private bpffs")
		t.Cleanup(func() {
			if err := unix.Unmount(tmp, unix.MNT_DETACH); err != nil {
				t.Logf("unmount %s: %v", tmp, err)
			}
			os.Remove(tmp)
		})
		base = tmp
	}
	dir := filepath.Join(base, "podmesh-test-"+RandomSuffix())
	must(t, os.MkdirAll(dir, 0o700), "create %s", dir)
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove %s: %v", dir, err)
		}
	})
	return dir
}
