package datapath

import (
	"crypto/sha256"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// This file holds the pure core of the datapath: desired Entry → the netlink
// objects a backend programs, and the comparisons that decide whether what is
// in the kernel already matches. Nothing here calls the kernel.

const (
	// RouteProtocol tags every route podmesh installs (rtm_protocol). 150 is
	// not among iproute2's reserved numbers (/usr/share/iproute2/rt_protos);
	// add "150 podmesh" to /etc/iproute2/rt_protos.d/podmesh.conf to see the
	// name in `ip route`. Prune considers only routes with this tag.
	RouteProtocol netlink.RouteProtocol = 150

	// DeviceName is the tunnel device of the vxlan and ebpf modes.
	DeviceName = "podmesh_vxlan"

	// VNI is the VXLAN network identifier of the vxlan mode's device.
	VNI = 0x706d // "pm"

	// routeTable is the table podmesh routes live in. Remote pod CIDRs must be
	// reachable from every pod, so they go into main; prune only ever looks at
	// routes tagged with RouteProtocol, so sharing the table is safe.
	routeTable = unix.RT_TABLE_MAIN
)

// Mode names.
const (
	ModeEBPF   = "ebpf"
	ModeVXLAN  = "vxlan"
	ModeNative = "native"
)

// encapOverhead is what a VXLAN encapsulation with an underlay of the given
// family costs: outer IP + UDP + VXLAN + inner Ethernet.
func encapOverhead(underlay netip.Addr) int {
	if underlay.Is4() {
		return meshapi.VXLANOverheadIPv4
	}
	return meshapi.VXLANOverheadIPv6
}

// routeMTU is the MTU remote-prefix routes carry: the underlay MTU minus the
// encapsulation overhead (none in native mode).
func routeMTU(mode string, underlayMTU int, local netip.Addr) int {
	if mode == ModeNative {
		return underlayMTU
	}
	return underlayMTU - encapOverhead(local)
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if a.BitLen() != bits {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

func ipToAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

// TunnelMAC is the MAC address of the vxlan-mode device of the node whose
// underlay address is a. It is derived from the address so that no MAC has to
// be distributed: a node computes its peer's MAC from the tunnel endpoint it
// already knows. IPv4: 0e:70 followed by the four address bytes; IPv6: 0e
// followed by five bytes of the address's SHA-256. Both are locally
// administered unicast addresses.
func TunnelMAC(a netip.Addr) net.HardwareAddr {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		return net.HardwareAddr{0x0e, 0x70, b[0], b[1], b[2], b[3]}
	}
	b := a.As16()
	sum := sha256.Sum256(b[:])
	return net.HardwareAddr{0x0e, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// vtep returns the on-link gateway a vxlan-mode route for an inner prefix of
// the given family uses to reach endpoint, and whether it must be expressed as
// RTA_VIA (an IPv4 route through an IPv6 gateway).
//
// Over an IPv4 underlay, an IPv4 prefix uses the endpoint's own underlay
// address as gateway. Every IPv6 gateway is instead the link-local address
// derived (EUI-64) from the peer's TunnelMAC: the kernel refuses an onlink
// IPv6 gateway that a route through another device covers (the peer's
// underlay address is covered by the underlay subnet's route), while a
// link-local gateway is on-link by definition and unique per peer on the
// podmesh device.
func vtep(prefix netip.Prefix, endpoint netip.Addr) (gw netip.Addr, via bool) {
	if endpoint.Is4() && prefix.Addr().Is4() {
		return endpoint, false
	}
	return linkLocalFromMAC(TunnelMAC(endpoint)), prefix.Addr().Is4()
}

func linkLocalFromMAC(mac net.HardwareAddr) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	b[8] = mac[0] ^ 0x02
	b[9], b[10] = mac[1], mac[2]
	b[11], b[12] = 0xff, 0xfe
	b[13], b[14], b[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(b)
}

// routeParams is what a route needs beyond the Entry.
type routeParams struct {
	mode      string
	linkIndex int // tunnel device (vxlan, ebpf); ignored by native
	mtu       int // 0: no MTU metric
}

// routeSpec is the route podmesh wants for one Entry, in a form that costs no
// allocation to build and compare: a full pass compares every wanted prefix
// with the kernel, and only the few that differ become netlink.Routes.
type routeSpec struct {
	prefix netip.Prefix
	gw     netip.Addr // invalid: no gateway
	via    bool       // gw is of the other family (RTA_VIA)
	link   int        // 0: the kernel resolves it (native)
	scope  netlink.Scope
	onlink bool
	mtu    int // 0: no MTU metric
}

// specFor converts an Entry into the route podmesh installs for it.
func specFor(e Entry, rp routeParams) routeSpec {
	s := routeSpec{prefix: e.Prefix.Masked(), mtu: rp.mtu, scope: netlink.SCOPE_UNIVERSE}
	switch rp.mode {
	case ModeNative:
		s.gw, s.via = e.TunnelEndpoint, e.Prefix.Addr().Is4() != e.TunnelEndpoint.Is4()
	case ModeVXLAN:
		s.link, s.onlink = rp.linkIndex, true
		s.gw, s.via = vtep(e.Prefix, e.TunnelEndpoint)
	case ModeEBPF:
		s.link, s.scope = rp.linkIndex, netlink.SCOPE_LINK
	}
	return s
}

// route is the netlink form of the spec.
func (s routeSpec) route() netlink.Route {
	r := netlink.Route{
		Dst:       prefixToIPNet(s.prefix),
		Family:    family(s.prefix.Addr()),
		Protocol:  RouteProtocol,
		Table:     routeTable,
		Type:      unix.RTN_UNICAST,
		Scope:     s.scope,
		LinkIndex: s.link,
		MTU:       s.mtu,
	}
	if s.onlink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	switch {
	case !s.gw.IsValid():
	case s.via:
		r.Via = &netlink.Via{AddrFamily: family(s.gw), Addr: s.gw.AsSlice()}
	default:
		r.Gw = s.gw.AsSlice()
	}
	return r
}

// matches reports whether the kernel route have realises the spec. Fields the
// kernel fills in on its own (priority of IPv6 routes, the resolved output
// link of a gateway route, flags other than onlink) are not compared, nor is
// the scope of IPv6 routes, which the kernel does not keep (it always
// reports universe). What is compared is the routes' signatures (routeSig),
// the same a full pass's digest of a whole dump is made of.
func (s routeSpec) matches(have netlink.Route) bool {
	if have.Protocol != RouteProtocol || have.Table != routeTable {
		return false
	}
	// The caller found have under the spec's prefix.
	k := kernelRouteOf(have, s.prefix)
	return k.sig(s.link) == s.sig()
}

// kernelRouteOf is the compact form of a netlink route whose destination is
// dst.
func kernelRouteOf(r netlink.Route, dst netip.Prefix) kernelRoute {
	return kernelRoute{
		dst: dst, gw: ipToAddr(r.Gw), via: viaAddr(r.Via),
		link: r.LinkIndex, mtu: r.MTU, priority: r.Priority, table: r.Table, flags: r.Flags,
		family: uint8(r.Family), tos: uint8(r.Tos), protocol: r.Protocol, scope: r.Scope, typ: uint8(r.Type),
		multipath: len(r.MultiPath) > 0, encap: r.Encap != nil,
	}
}

// desiredRoute converts an Entry into the route podmesh installs for it.
func desiredRoute(e Entry, rp routeParams) netlink.Route { return specFor(e, rp).route() }

func viaAddr(d netlink.Destination) netip.Addr {
	v, ok := d.(*netlink.Via)
	if !ok || v == nil {
		return netip.Addr{}
	}
	return ipToAddr(v.Addr)
}

// routeKey is a route's identity within podmesh's table: destination only,
// since podmesh installs one route per prefix with TOS and priority zero.
func routeKey(r netlink.Route) (netip.Prefix, bool) {
	if r.Dst == nil {
		return netip.Prefix{}, false
	}
	return ipNetToPrefix(r.Dst)
}

// routePlan is the outcome of comparing desired routes with the kernel.
type routePlan struct {
	upsert    []netlink.Route         // missing or different, in prefix order
	remove    []netlink.Route         // podmesh routes no longer wanted (and allowed to go)
	conflicts map[netip.Prefix]string // wanted prefixes held by a foreign route
}

// planRoutes diffs the routes want asks for (spec per entry) against the
// routes found in podmesh's table. ours are routes tagged with RouteProtocol,
// foreign all others with a destination. canDelete says whether an unwanted
// podmesh route may be removed now (before the first full sync only routes
// this process added may go).
func planRoutes(want map[netip.Prefix]Entry, spec func(Entry) routeSpec, ours, foreign map[netip.Prefix]netlink.Route, canDelete func(netip.Prefix) bool) routePlan {
	var p routePlan
	for pfx, e := range want {
		if _, ok := foreign[pfx]; ok {
			if p.conflicts == nil {
				p.conflicts = make(map[netip.Prefix]string)
			}
			p.conflicts[pfx] = "a route podmesh did not create holds this prefix"
			continue
		}
		s := spec(e)
		if h, ok := ours[pfx]; ok && s.matches(h) {
			continue
		}
		p.upsert = append(p.upsert, s.route())
	}
	for pfx, h := range ours {
		if _, ok := want[pfx]; ok {
			continue
		}
		if canDelete(pfx) {
			p.remove = append(p.remove, h)
		}
	}
	// A stable order for logs and tests; the lists are usually short.
	sortRoutes(p.upsert)
	sortRoutes(p.remove)
	return p
}

func sortRoutes(rs []netlink.Route) {
	slices.SortFunc(rs, func(a, b netlink.Route) int {
		pa, _ := routeKey(a)
		pb, _ := routeKey(b)
		return pa.Compare(pb)
	})
}

// desiredNeigh is the permanent neighbour entry resolving a vxlan-mode
// route's on-link gateway to the peer device's MAC.
func desiredNeigh(e Entry, linkIndex int) netlink.Neigh {
	gw, _ := vtep(e.Prefix, e.TunnelEndpoint)
	return netlink.Neigh{
		LinkIndex:    linkIndex,
		Family:       family(gw),
		State:        netlink.NUD_PERMANENT,
		Type:         unix.RTN_UNICAST,
		IP:           gw.AsSlice(),
		HardwareAddr: TunnelMAC(e.TunnelEndpoint),
	}
}

// desiredFDB is the static forwarding entry sending frames for the peer's MAC
// to the peer's underlay address.
func desiredFDB(endpoint netip.Addr, linkIndex int) netlink.Neigh {
	return netlink.Neigh{
		LinkIndex:    linkIndex,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT,
		Flags:        netlink.NTF_SELF,
		IP:           endpoint.AsSlice(),
		HardwareAddr: TunnelMAC(endpoint),
	}
}

// neighMatches compares the fields podmesh sets.
func neighMatches(want, have netlink.Neigh) bool {
	return ipToAddr(want.IP) == ipToAddr(have.IP) &&
		want.HardwareAddr.String() == have.HardwareAddr.String() &&
		have.State&netlink.NUD_PERMANENT != 0
}

func sortedPrefixes[V any](m map[netip.Prefix]V) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	sortPrefixes(out)
	return out
}
