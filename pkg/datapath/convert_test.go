package datapath

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }

func TestRouteMTUSubtractsEncapsulationOverhead(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		underlay int
		local    string
		want     int
	}{
		{ModeNative, 1500, "192.168.0.1", 1500},
		{ModeVXLAN, 1500, "192.168.0.1", 1450},
		{ModeEBPF, 1500, "192.168.0.1", 1450},
		{ModeEBPF, 9000, "fd00::1", 8930},
		{ModeVXLAN, 1500, "fd00::1", 1430},
	} {
		assert.Equal(t, tc.want, routeMTU(tc.mode, tc.underlay, mustAddr(tc.local)), "%s over %s", tc.mode, tc.local)
	}
}

func TestDesiredRoutePerMode(t *testing.T) {
	e4 := Entry{Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("192.168.0.3"), ClusterID: 2, Cluster: "b"}
	e6over4 := Entry{Prefix: mustPrefix("fd02::/64"), TunnelEndpoint: mustAddr("192.168.0.3"), ClusterID: 2, Cluster: "b"}
	e4over6 := Entry{Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("fd00::3"), ClusterID: 2, Cluster: "b"}
	for _, tc := range []struct {
		name      string
		e         Entry
		rp        routeParams
		gw        string
		via       string
		link      int
		scope     netlink.Scope
		onlink    bool
		fam       int
		wantMTU   int
		wantTable int
	}{
		{name: "native v4", e: e4, rp: routeParams{mode: ModeNative, mtu: 1500}, gw: "192.168.0.3", scope: netlink.SCOPE_UNIVERSE, fam: unix.AF_INET, wantMTU: 1500},
		{name: "native v4 over v6 next hop", e: e4over6, rp: routeParams{mode: ModeNative, mtu: 1500}, via: "fd00::3", scope: netlink.SCOPE_UNIVERSE, fam: unix.AF_INET, wantMTU: 1500},
		{name: "vxlan v4", e: e4, rp: routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1450}, gw: "192.168.0.3", link: 7, onlink: true, scope: netlink.SCOPE_UNIVERSE, fam: unix.AF_INET, wantMTU: 1450},
		{name: "vxlan v6 over v4 uses derived link-local vtep", e: e6over4, rp: routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1450}, gw: "fe80::c70:c0ff:fea8:3", link: 7, onlink: true, scope: netlink.SCOPE_UNIVERSE, fam: unix.AF_INET6, wantMTU: 1450},
		{name: "vxlan v4 over v6 uses via the derived link-local vtep", e: e4over6, rp: routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1430}, via: linkLocalFromMAC(TunnelMAC(mustAddr("fd00::3"))).String(), link: 7, onlink: true, scope: netlink.SCOPE_UNIVERSE, fam: unix.AF_INET, wantMTU: 1430},
		{name: "vxlan v6 over v6 uses the derived link-local vtep", e: Entry{Prefix: mustPrefix("fd02::/64"), TunnelEndpoint: mustAddr("fd00::3")}, rp: routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1430}, gw: linkLocalFromMAC(TunnelMAC(mustAddr("fd00::3"))).String(), link: 7, onlink: true, scope: netlink.SCOPE_UNIVERSE, fam: unix.AF_INET6, wantMTU: 1430},
		{name: "ebpf", e: e4, rp: routeParams{mode: ModeEBPF, linkIndex: 9, mtu: 1450}, link: 9, scope: netlink.SCOPE_LINK, fam: unix.AF_INET, wantMTU: 1450},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := desiredRoute(tc.e, tc.rp)
			pfx, ok := routeKey(r)
			require.True(t, ok)
			assert.Equal(t, tc.e.Prefix, pfx)
			assert.Equal(t, RouteProtocol, r.Protocol)
			assert.Equal(t, unix.RT_TABLE_MAIN, r.Table)
			assert.Equal(t, tc.fam, r.Family)
			assert.Equal(t, tc.scope, r.Scope)
			assert.Equal(t, tc.link, r.LinkIndex)
			assert.Equal(t, tc.wantMTU, r.MTU)
			assert.Equal(t, tc.onlink, r.Flags&int(netlink.FLAG_ONLINK) != 0)
			if tc.gw != "" {
				assert.Equal(t, mustAddr(tc.gw), ipToAddr(r.Gw))
			} else {
				assert.Nil(t, r.Gw)
			}
			if tc.via != "" {
				assert.Equal(t, mustAddr(tc.via), viaAddr(r.Via))
			} else {
				assert.Nil(t, r.Via)
			}
		})
	}
}

func TestRouteSpecMatchesIgnoresKernelFilledFields(t *testing.T) {
	e := Entry{Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("192.168.0.3"), ClusterID: 2}
	spec := specFor(e, routeParams{mode: ModeNative, mtu: 1500})
	have := spec.route()
	assert.True(t, spec.matches(have), "a spec matches its own route")
	have.LinkIndex = 3  // resolved by the kernel
	have.Priority = 0   // as dumped
	have.Flags |= 0x100 // some other flag
	assert.True(t, spec.matches(have))

	for name, mutate := range map[string]func(r *netlink.Route){
		"mtu":     func(r *netlink.Route) { r.MTU = 1400 },
		"gateway": func(r *netlink.Route) { r.Gw = net.ParseIP("192.168.0.4") },
		"no gw":   func(r *netlink.Route) { r.Gw = nil },
		"via": func(r *netlink.Route) {
			r.Gw, r.Via = nil, &netlink.Via{AddrFamily: unix.AF_INET, Addr: net.ParseIP("192.168.0.3").To4()}
		},
		"protocol": func(r *netlink.Route) { r.Protocol = unix.RTPROT_STATIC },
		"table":    func(r *netlink.Route) { r.Table = 100 },
		"scope":    func(r *netlink.Route) { r.Scope = netlink.SCOPE_LINK },
		"type":     func(r *netlink.Route) { r.Type = unix.RTN_BLACKHOLE },
		"multipath": func(r *netlink.Route) {
			r.MultiPath = []*netlink.NexthopInfo{{Gw: net.ParseIP("192.168.0.3")}}
		},
	} {
		h := spec.route()
		mutate(&h)
		assert.False(t, spec.matches(h), name)
	}

	// IPv6 routes read back with universe scope whatever was asked.
	e6 := Entry{Prefix: mustPrefix("fd02::/64"), TunnelEndpoint: mustAddr("fd00::3"), ClusterID: 2}
	s6 := specFor(e6, routeParams{mode: ModeEBPF, linkIndex: 5, mtu: 1430})
	h6 := s6.route()
	h6.Scope = netlink.SCOPE_UNIVERSE
	assert.True(t, s6.matches(h6), "an IPv6 link route as the kernel reports it")

	sv := specFor(e, routeParams{mode: ModeVXLAN, linkIndex: 5, mtu: 1450})
	hv := sv.route()
	assert.True(t, sv.matches(hv))
	hv.LinkIndex = 6
	assert.False(t, sv.matches(hv), "a vxlan route on another link")
	hv = sv.route()
	hv.Flags = 0
	assert.False(t, sv.matches(hv), "a vxlan route without onlink")

	// Every shape of TestDesiredRoutePerMode matches its own route.
	for _, c := range []struct {
		e  Entry
		rp routeParams
	}{
		{Entry{Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("fd00::3")}, routeParams{mode: ModeNative, mtu: 1500}},
		{Entry{Prefix: mustPrefix("fd02::/64"), TunnelEndpoint: mustAddr("192.168.0.3")}, routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1450}},
		{Entry{Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("fd00::3")}, routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1430}},
		{Entry{Prefix: mustPrefix("fd02::/64"), TunnelEndpoint: mustAddr("fd00::3")}, routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1430}},
	} {
		sp := specFor(c.e, c.rp)
		assert.True(t, sp.matches(sp.route()), "%s %s via %s", c.rp.mode, c.e.Prefix, c.e.TunnelEndpoint)
	}
}

func TestPlanRoutesAddsChangesAndPrunesOnlyWhatItMay(t *testing.T) {
	spec := func(e Entry) routeSpec { return specFor(e, routeParams{mode: ModeNative, mtu: 1500}) }
	route := func(p, gw string, mtu int) netlink.Route {
		return desiredRoute(Entry{Prefix: mustPrefix(p), TunnelEndpoint: mustAddr(gw)}, routeParams{mode: ModeNative, mtu: mtu})
	}
	want := map[netip.Prefix]Entry{
		mustPrefix("10.2.0.0/24"):  {Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("192.168.0.3")},
		mustPrefix("10.2.1.0/24"):  {Prefix: mustPrefix("10.2.1.0/24"), TunnelEndpoint: mustAddr("192.168.0.4")},
		mustPrefix("10.2.0.77/32"): {Prefix: mustPrefix("10.2.0.77/32"), TunnelEndpoint: mustAddr("192.168.0.4")},
		mustPrefix("10.9.0.0/24"):  {Prefix: mustPrefix("10.9.0.0/24"), TunnelEndpoint: mustAddr("192.168.0.4")},
	}
	ours := map[netip.Prefix]netlink.Route{
		mustPrefix("10.2.0.0/24"): route("10.2.0.0/24", "192.168.0.3", 1500), // matches
		mustPrefix("10.2.1.0/24"): route("10.2.1.0/24", "192.168.0.4", 1400), // stale MTU
		mustPrefix("10.3.0.0/24"): route("10.3.0.0/24", "192.168.0.5", 1500), // unwanted, deletable
		mustPrefix("10.4.0.0/24"): route("10.4.0.0/24", "192.168.0.6", 1500), // unwanted, adopted
	}
	foreignRoute := route("10.9.0.0/24", "192.168.0.9", 0)
	foreignRoute.Protocol = unix.RTPROT_STATIC
	foreign := map[netip.Prefix]netlink.Route{mustPrefix("10.9.0.0/24"): foreignRoute}

	plan := planRoutes(want, spec, ours, foreign, func(p netip.Prefix) bool { return p == mustPrefix("10.3.0.0/24") })

	var up, rm []netip.Prefix
	for _, r := range plan.upsert {
		p, _ := routeKey(r)
		up = append(up, p)
	}
	for _, r := range plan.remove {
		p, _ := routeKey(r)
		rm = append(rm, p)
	}
	assert.Equal(t, []netip.Prefix{mustPrefix("10.2.0.77/32"), mustPrefix("10.2.1.0/24")}, up)
	assert.Equal(t, []netip.Prefix{mustPrefix("10.3.0.0/24")}, rm)
	assert.Contains(t, plan.conflicts, mustPrefix("10.9.0.0/24"), "a foreign route is never replaced")
	assert.Len(t, plan.conflicts, 1)
	assert.Equal(t, 1500, plan.upsert[1].MTU, "the stale route is replaced by the wanted one")
}

func TestTunnelMACIsDerivedLocallyAdministeredAndDistinct(t *testing.T) {
	m := TunnelMAC(mustAddr("192.168.0.3"))
	assert.Equal(t, "0e:70:c0:a8:00:03", m.String())
	assert.Equal(t, m, TunnelMAC(mustAddr("::ffff:192.168.0.3")), "IPv4-mapped addresses map to the IPv4 MAC")
	seen := map[string]netip.Addr{}
	for _, s := range []string{"192.168.0.3", "192.168.0.4", "fd00::3", "fd00::4", "2001:db8::1"} {
		a := mustAddr(s)
		mac := TunnelMAC(a)
		require.Len(t, mac, 6)
		assert.Equal(t, byte(0x02), mac[0]&0x03, "%s: locally administered unicast", s)
		if prev, dup := seen[mac.String()]; dup {
			t.Fatalf("%s and %s share MAC %s", prev, a, mac)
		}
		seen[mac.String()] = a
	}
}

func TestVXLANNeighbourAndFDBPointAtThePeer(t *testing.T) {
	e := Entry{Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("192.168.0.3")}
	n := desiredNeigh(e, 4)
	assert.Equal(t, mustAddr("192.168.0.3"), ipToAddr(n.IP))
	assert.Equal(t, "0e:70:c0:a8:00:03", n.HardwareAddr.String())
	assert.Equal(t, netlink.NUD_PERMANENT, n.State)
	assert.Equal(t, unix.AF_INET, n.Family)
	assert.Equal(t, 4, n.LinkIndex)

	f := desiredFDB(e.TunnelEndpoint, 4)
	assert.Equal(t, unix.AF_BRIDGE, f.Family)
	assert.Equal(t, netlink.NTF_SELF, f.Flags)
	assert.Equal(t, n.HardwareAddr, f.HardwareAddr)
	assert.Equal(t, e.TunnelEndpoint, ipToAddr(f.IP))

	have := n
	have.State = netlink.NUD_PERMANENT
	assert.True(t, neighMatches(n, have))
	have.HardwareAddr = net.HardwareAddr{0x0e, 0, 0, 0, 0, 1}
	assert.False(t, neighMatches(n, have))
	have = n
	have.State = netlink.NUD_REACHABLE
	assert.False(t, neighMatches(n, have), "a learnt entry is replaced by a permanent one")
}

func TestIPNetRoundTrip(t *testing.T) {
	for _, s := range []string{"10.2.0.0/24", "10.2.0.77/32", "fd02::/64", "fd02::5/128", "0.0.0.0/0"} {
		p := mustPrefix(s)
		got, ok := ipNetToPrefix(prefixToIPNet(p))
		require.True(t, ok, s)
		assert.Equal(t, p, got)
	}
	got, ok := ipNetToPrefix(prefixToIPNet(mustPrefix("10.2.0.9/24")))
	require.True(t, ok)
	assert.Equal(t, mustPrefix("10.2.0.0/24"), got, "prefixes are masked")
}

// A dump's digest says "in sync" exactly when podmesh's routes are the
// wanted ones in every compared field and no foreign route holds a wanted
// prefix.
func TestRouteViewInSyncOnlyWhenPodmeshRoutesAreExactlyTheWantedOnes(t *testing.T) {
	for _, rp := range []routeParams{
		{mode: ModeNative, mtu: 1500},
		{mode: ModeVXLAN, linkIndex: 7, mtu: 1450},
	} {
		spec := func(e Entry) routeSpec { return specFor(e, rp) }
		want := map[netip.Prefix]Entry{}
		for _, c := range []struct{ p, ep string }{{"10.2.0.0/24", "192.168.0.3"}, {"10.2.1.7/32", "192.168.0.4"}, {"fd02::/64", "192.168.0.3"}} {
			want[mustPrefix(c.p)] = Entry{Prefix: mustPrefix(c.p), TunnelEndpoint: mustAddr(c.ep), ClusterID: 2}
		}
		converged := func() []kernelRoute {
			var rs []kernelRoute
			for _, p := range sortedPrefixes(want) {
				r := spec(want[p]).route()
				if rp.mode == ModeNative {
					r.LinkIndex = 3 // resolved by the kernel
				}
				if p.Addr().Is6() {
					r.Scope, r.Priority = netlink.SCOPE_UNIVERSE, 1024
				}
				rs = append(rs, kernelRouteOf(r, p))
			}
			foreign := kernelRouteOf(netlink.Route{Gw: net.ParseIP("192.168.77.1"), Protocol: unix.RTPROT_STATIC, Table: routeTable}, mustPrefix("10.99.0.0/24"))
			return append(rs, foreign)
		}
		link := linkOf(want, spec)
		rs := converged()
		slices.Reverse(rs)
		assert.True(t, (&routeView{routes: rs}).inSync(want, spec, link), "%s: converged, in any order", rp.mode)

		for name, mutate := range map[string]func([]kernelRoute) []kernelRoute{
			"a route missing": func(rs []kernelRoute) []kernelRoute { return rs[1:] },
			"an extra podmesh route": func(rs []kernelRoute) []kernelRoute {
				extra := rs[0]
				extra.dst = mustPrefix("10.2.9.0/24")
				return append(rs, extra)
			},
			"another mtu":     func(rs []kernelRoute) []kernelRoute { rs[0].mtu = 1400; return rs },
			"another gateway": func(rs []kernelRoute) []kernelRoute { rs[1].gw = mustAddr("192.168.0.9"); return rs },
			"another type":    func(rs []kernelRoute) []kernelRoute { rs[0].typ = unix.RTN_BLACKHOLE; return rs },
			"a multipath route": func(rs []kernelRoute) []kernelRoute {
				rs[0].multipath = true
				return rs
			},
			"a foreign route on a wanted prefix": func(rs []kernelRoute) []kernelRoute {
				f := rs[len(rs)-1]
				f.dst = mustPrefix("10.2.1.7/32")
				return append(rs, f)
			},
		} {
			assert.False(t, (&routeView{routes: mutate(converged())}).inSync(want, spec, link), "%s: %s", rp.mode, name)
		}
		if rp.mode == ModeVXLAN {
			rs := converged()
			rs[0].link = 8
			assert.False(t, (&routeView{routes: rs}).inSync(want, spec, link), "a vxlan route on another link")
		}
	}
}
