package datapath

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
)

// The Go side of a full pass at 100,000 prefixes, without the kernel:
// converting the desired set to routes and diffing it against a kernel that
// already matches (the periodic re-check's common case). The privileged,
// end-to-end numbers come from test/bench-datapath.

func benchEntries(n int) map[netip.Prefix]Entry {
	out := make(map[netip.Prefix]Entry, n)
	for i := range n {
		a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		e := Entry{Prefix: netip.PrefixFrom(a, 32), TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, 0, byte(1 + i%100)}), ClusterID: 2, Cluster: "b"}
		out[e.Prefix] = e
	}
	return out
}

func BenchmarkPlanRoutesConverged100k(b *testing.B) {
	want := benchEntries(100_000)
	rp := routeParams{mode: ModeEBPF, linkIndex: 7, mtu: 1450}
	ours := make(map[netip.Prefix]netlink.Route, len(want))
	for p, e := range want {
		ours[p] = desiredRoute(e, rp)
	}
	never := func(netip.Prefix) bool { return false }
	spec := func(e Entry) routeSpec { return specFor(e, rp) }
	b.ReportAllocs()
	for b.Loop() {
		if plan := planRoutes(want, spec, ours, nil, never); len(plan.upsert) != 0 {
			b.Fatalf("converged set planned %d upserts", len(plan.upsert))
		}
	}
}

func BenchmarkDesiredChanges1kOf100k(b *testing.B) {
	d := NewDesired()
	all := make([]Entry, 0, 100_000)
	for _, e := range benchEntries(100_000) {
		all = append(all, e)
	}
	d.SetCluster("b", nil, all)
	v := d.Version()
	for i := range 1000 {
		e := all[i]
		e.TunnelEndpoint = netip.MustParseAddr("192.168.1.1")
		d.Upsert(e)
	}
	b.ReportAllocs()
	for b.Loop() {
		ch, ok := d.Changes(v)
		if !ok || len(ch.Objects) != 1000 {
			b.Fatalf("ok=%v changes=%d", ok, len(ch.Objects))
		}
	}
}
