package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/internal/testutils"
)

const (
	vxlanName = "podmesh_vxlan"
	vxlanPort = 8472
)

// node is one side of the two-namespace test topology.
type node struct {
	name      string
	ns        netns.NsHandle
	h         *netlink.Handle
	underlay  string // name of the veth end in this namespace
	underIP   netip.Prefix
	pod4      netip.Addr // on lo: an address "behind" the node
	pod6      netip.Addr
	clusterID uint32
	pinDir    string
	vxlanIdx  int
	dp        *Datapath
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// writeSysctl writes a sysctl of the namespace ns (never the host's): the
// /proc/sys/net tree a thread sees is the one of its network namespace.
func writeSysctl(ns netns.NsHandle, path, value string) error {
	return inNetNS(ns, func() error {
		return os.WriteFile("/proc/sys/"+path, []byte(value), 0o644)
	})
}

func readHostSysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + path)
	require.NoError(t, err)
	return string(b)
}

// pairOptions shape the test topology.
type pairOptions struct {
	v6Underlay bool       // IPv6 tunnel endpoints
	mode       attachMode // how Attach hooks the program
	// specHook, if set, changes the collection spec of both nodes' first
	// Load (to build an "older" datapath).
	specHook func(*ebpf.CollectionSpec)
}

// setupPair builds two namespaces joined by a veth underlay, each with an
// external VXLAN device podmesh_vxlan, pod addresses on lo, routes of the
// peer's pod prefixes to the VXLAN device, and the datapath loaded and
// attached.
func setupPair(t *testing.T, o pairOptions) (a, b *node) {
	t.Helper()
	v6Underlay, mode := o.v6Underlay, o.mode
	a = &node{name: "a", clusterID: 1, underlay: "pmul0",
		pod4: netip.MustParseAddr("10.201.1.1"), pod6: netip.MustParseAddr("fd01:1::1")}
	b = &node{name: "b", clusterID: 2, underlay: "pmul1",
		pod4: netip.MustParseAddr("10.201.2.1"), pod6: netip.MustParseAddr("fd01:2::1")}
	if v6Underlay {
		a.underIP, b.underIP = netip.MustParsePrefix("fd77::1/64"), netip.MustParsePrefix("fd77::2/64")
	} else {
		a.underIP, b.underIP = netip.MustParsePrefix("192.168.77.1/24"), netip.MustParsePrefix("192.168.77.2/24")
	}

	hostRP := readHostSysctl(t, "net/ipv4/conf/all/rp_filter")
	hostFwd := readHostSysctl(t, "net/ipv4/ip_forward")
	for _, n := range []*node{a, b} {
		n.ns = newNetNS(t)
		h, err := netlink.NewHandleAt(n.ns)
		require.NoError(t, err)
		t.Cleanup(h.Close)
		n.h = h
		n.pinDir = testPinDir(t)
		// Strict reverse-path filtering must not hurt: the return route
		// points at the tunnel device the reply arrives on.
		require.NoError(t, writeSysctl(n.ns, "net/ipv4/conf/all/rp_filter", "1"))
		require.NoError(t, writeSysctl(n.ns, "net/ipv4/conf/default/rp_filter", "1"))
		require.NoError(t, writeSysctl(n.ns, "net/ipv4/ip_forward", "1"))
		// No IPv6 link-local addresses, hence no router solicitations or
		// MLD reports leaving through podmesh_vxlan at random moments:
		// tests count the program's misses exactly.
		require.NoError(t, writeSysctl(n.ns, "net/ipv6/conf/default/addr_gen_mode", "1"))
		require.NoError(t, writeSysctl(n.ns, "net/ipv6/conf/default/router_solicitations", "0"))
	}
	require.Equal(t, hostRP, readHostSysctl(t, "net/ipv4/conf/all/rp_filter"), "host sysctl untouched")
	require.Equal(t, hostFwd, readHostSysctl(t, "net/ipv4/ip_forward"), "host sysctl untouched")

	// Underlay: a veth pair, one end in each namespace.
	require.NoError(t, a.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.underlay}, PeerName: b.underlay}))
	peer, err := a.h.LinkByName(b.underlay)
	require.NoError(t, err)
	require.NoError(t, a.h.LinkSetNsFd(peer, int(b.ns)))

	devMAC := mustMAC(t, DeviceMAC)
	for _, n := range []*node{a, b} {
		lo, err := n.h.LinkByName("lo")
		require.NoError(t, err)
		require.NoError(t, n.h.LinkSetUp(lo))
		for _, p := range []netip.Addr{n.pod4, n.pod6} {
			// No DAD anywhere: a tentative address is no valid route source.
			require.NoError(t, n.h.AddrAdd(lo, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(p, p.BitLen())), Flags: unix.IFA_F_NODAD}))
		}
		ul, err := n.h.LinkByName(n.underlay)
		require.NoError(t, err)
		require.NoError(t, n.h.AddrAdd(ul, &netlink.Addr{IPNet: prefixNet(n.underIP), Flags: unix.IFA_F_NODAD}))
		require.NoError(t, n.h.LinkSetUp(ul))

		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: vxlanName, MTU: 1450, HardwareAddr: devMAC},
			FlowBased: true,
			Port:      vxlanPort,
		}
		require.NoError(t, n.h.LinkAdd(vx))
		vxl, err := n.h.LinkByName(vxlanName)
		require.NoError(t, err)
		require.NoError(t, n.h.LinkSetARPOff(vxl))
		require.NoError(t, n.h.LinkSetUp(vxl))
		n.vxlanIdx = vxl.Attrs().Index
	}
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		n, peer := pair[0], pair[1]
		for _, p := range []netip.Addr{n.pod4, n.pod6} {
			remote := peer.pod4
			bits := 24
			if p.Is6() {
				remote, bits = peer.pod6, 64
			}
			require.NoError(t, n.h.RouteAdd(&netlink.Route{
				LinkIndex: n.vxlanIdx,
				Dst:       prefixNet(netip.PrefixFrom(remote, bits).Masked()),
				Src:       p.AsSlice(),
				Scope:     netlink.SCOPE_LINK,
			}), "route %s/%d via %s in %s", remote, bits, vxlanName, n.name)
		}
	}

	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		n, peer := pair[0], pair[1]
		dp, err := load(Options{PinDir: n.pinDir, LocalClusterID: n.clusterID, Log: testLogger(t)}, o.specHook)
		require.NoError(t, err)
		t.Cleanup(func() { dp.Close() })
		dp.mode = mode
		require.NoError(t, inNetNS(n.ns, func() error { return dp.Attach(n.vxlanIdx) }))
		n.dp = dp
		_, err = dp.Sync([]Entry{
			{Prefix: netip.PrefixFrom(peer.pod4, 24).Masked(), TunnelEndpoint: peer.underIP.Addr(), ClusterID: peer.clusterID},
			{Prefix: netip.PrefixFrom(peer.pod6, 64).Masked(), TunnelEndpoint: peer.underIP.Addr(), ClusterID: peer.clusterID},
		}, true)
		require.NoError(t, err)
	}
	return a, b
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func listenUDP(t *testing.T, ns netns.NsHandle, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	require.NoError(t, inNetNS(ns, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return c
}

// capture is a packet socket on one device, opened before traffic starts so
// every frame after that is queued for it.
type capture struct{ fd int }

func openCapture(t *testing.T, ns netns.NsHandle, ifname string) *capture {
	t.Helper()
	var fd int
	require.NoError(t, inNetNS(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	}))
	t.Cleanup(func() { unix.Close(fd) })
	return &capture{fd: fd}
}

// vxlanFrame is what the test learns from one captured VXLAN packet.
type vxlanFrame struct {
	outerDst        netip.Addr
	vni             uint32
	innerDstMAC     net.HardwareAddr
	innerSrcMAC     net.HardwareAddr
	innerDst        netip.Addr
	innerUDPPayload []byte
}

// next returns the next VXLAN packet to dstPort seen by the capture whose
// inner payload equals payload, waiting at most until deadline.
func (c *capture) next(deadline time.Time, payload []byte) (vxlanFrame, error) {
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return vxlanFrame{}, errors.New("no matching VXLAN frame captured before the deadline")
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return vxlanFrame{}, err
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return vxlanFrame{}, err
		}
		if f, ok := parseVXLAN(buf[:n]); ok && bytes.Equal(f.innerUDPPayload, payload) {
			return f, nil
		}
	}
}

func parseVXLAN(b []byte) (vxlanFrame, bool) {
	var f vxlanFrame
	if len(b) < 14 {
		return f, false
	}
	et := binary.BigEndian.Uint16(b[12:])
	b = b[14:]
	var proto byte
	switch et {
	case 0x0800:
		if len(b) < 20 {
			return f, false
		}
		ihl := int(b[0]&0xf) * 4
		proto, f.outerDst = b[9], netip.AddrFrom4([4]byte(b[16:20]))
		b = b[ihl:]
	case 0x86dd:
		if len(b) < 40 {
			return f, false
		}
		proto, f.outerDst = b[6], netip.AddrFrom16([16]byte(b[24:40]))
		b = b[40:]
	default:
		return f, false
	}
	if proto != 17 || len(b) < 8+8+14 || binary.BigEndian.Uint16(b[2:]) != vxlanPort {
		return f, false
	}
	vx := b[8:16]
	f.vni = uint32(vx[4])<<16 | uint32(vx[5])<<8 | uint32(vx[6])
	inner := b[16:]
	f.innerDstMAC, f.innerSrcMAC = net.HardwareAddr(inner[0:6]), net.HardwareAddr(inner[6:12])
	ip := inner[14:]
	switch binary.BigEndian.Uint16(inner[12:]) {
	case 0x0800:
		if len(ip) < 28 {
			return f, false
		}
		f.innerDst = netip.AddrFrom4([4]byte(ip[16:20]))
		f.innerUDPPayload = ip[int(ip[0]&0xf)*4+8:]
	case 0x86dd:
		if len(ip) < 48 {
			return f, false
		}
		f.innerDst = netip.AddrFrom16([16]byte(ip[24:40]))
		f.innerUDPPayload = ip[48:]
	default:
		return f, false
	}
	return f, true
}

// roundTrip sends payload from client to server's address until the server
// echoes it back or the deadline passes (the first datagrams may race the
// veth carrier). It returns how many datagrams the client sent and the
// server echoed.
func roundTrip(t *testing.T, client, server *net.UDPConn, payload []byte, deadline time.Time) (sent, echoed int) {
	t.Helper()
	to := server.LocalAddr().(*net.UDPAddr).AddrPort()
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		_, err := client.WriteToUDPAddrPort(payload, to)
		require.NoError(t, err)
		sent++
		require.NoError(t, server.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
		n, from, err := server.ReadFromUDPAddrPort(buf)
		if isTimeout(err) {
			continue
		}
		require.NoError(t, err)
		require.Equal(t, payload, buf[:n])
		_, err = server.WriteToUDPAddrPort(buf[:n], from)
		require.NoError(t, err)
		echoed++
		require.NoError(t, client.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
		n, _, err = client.ReadFromUDPAddrPort(buf)
		if isTimeout(err) {
			continue
		}
		require.NoError(t, err)
		require.Equal(t, payload, buf[:n])
		return sent, echoed
	}
	t.Fatalf("no UDP round trip %s -> %s before the deadline", client.LocalAddr(), to)
	return sent, echoed
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestNamespaceTunnel(t *testing.T) {
	testutils.RequireRoot(t)
	for _, tc := range []struct {
		name       string
		v6Underlay bool
		mode       attachMode
	}{
		{"ipv4-underlay-tcx", false, attachAuto},
		{"ipv6-underlay-tcx", true, attachAuto},
		{"ipv4-underlay-cls_bpf", false, attachClsBPF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := setupPair(t, pairOptions{v6Underlay: tc.v6Underlay, mode: tc.mode})
			if tc.mode == attachClsBPF {
				for _, n := range []*node{a, b} {
					require.NoError(t, inNetNS(n.ns, func() error {
						f, err := findClsFilter(n.vxlanIdx)
						if err == nil && f == nil {
							err = errors.New("cls_bpf filter not found")
						}
						return err
					}))
				}
			}
			capB := openCapture(t, b.ns, b.underlay)
			deadline := time.Now().Add(20 * time.Second)

			want := map[*node]Counter{}
			for _, fam := range []struct {
				name        string
				src, dst    netip.Addr
				innerHeader int // Ethernet + IP + UDP
			}{
				{"ipv4", a.pod4, b.pod4, 14 + 20 + 8},
				{"ipv6", a.pod6, b.pod6, 14 + 40 + 8},
			} {
				payload := []byte("podmesh " + tc.name + " " + fam.name)
				client := listenUDP(t, a.ns, netip.AddrPortFrom(fam.src, 0))
				server := listenUDP(t, b.ns, netip.AddrPortFrom(fam.dst, 7777))
				sent, echoed := roundTrip(t, client, server, payload, deadline)
				t.Logf("%s: %d datagrams sent, %d echoed", fam.name, sent, echoed)

				// Every datagram to the peer's prefix went through the
				// program exactly once on its way out.
				frameLen := uint64(fam.innerHeader + len(payload))
				ca := want[a]
				ca.Packets += uint64(sent)
				ca.Bytes += uint64(sent) * frameLen
				want[a] = ca
				cb := want[b]
				cb.Packets += uint64(echoed)
				cb.Bytes += uint64(echoed) * frameLen
				want[b] = cb

				f, err := capB.next(deadline, payload)
				require.NoError(t, err)
				require.Equal(t, b.underIP.Addr(), f.outerDst, "outer destination is the tunnel endpoint")
				require.Equal(t, a.clusterID, f.vni, "VNI is the sender's cluster ID")
				require.Equal(t, mustMAC(t, DeviceMAC), f.innerDstMAC)
				require.Equal(t, mustMAC(t, InnerSourceMAC), f.innerSrcMAC)
				require.Equal(t, fam.dst, f.innerDst)
			}
			t.Logf("counters a: %v, b: %v", counters(t, a.dp), counters(t, b.dp))
			require.Equal(t, map[uint32]Counter{b.clusterID: want[a]}, counters(t, a.dp))
			require.Equal(t, map[uint32]Counter{a.clusterID: want[b]}, counters(t, b.dp))
		})
	}
}
