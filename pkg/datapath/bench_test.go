package datapath

import (
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
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

// benchSlice is benchEntries(n) in key order, as test/bench-datapath
// gives them.
func benchSlice(n int) []Entry {
	out := make([]Entry, n)
	for i := range out {
		a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		out[i] = Entry{Prefix: netip.PrefixFrom(a, 32), TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, 0, byte(1 + i%100)}), ClusterID: 2, Cluster: "b"}
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

// nullBackend is a kernel that already holds everything: it isolates the
// reconciler's own per-object work from the kernel's.
type nullBackend struct{ base }

func (nullBackend) mode() string                                            { return "null" }
func (nullBackend) setup() error                                            { return nil }
func (nullBackend) read(map[netip.Prefix]Entry, uint64) (kernelView, error) { return nil, nil }
func (nullBackend) delete([]Entry) map[netip.Prefix]error                   { return nil }
func (nullBackend) update(kernelView, map[netip.Prefix]Entry, uint64) (int, map[netip.Prefix]error) {
	return 0, nil
}
func (nullBackend) write([]Entry, uint64, func(netip.Prefix) bool) (int, map[netip.Prefix]error) {
	return 0, nil
}
func (nullBackend) prune(kernelView, map[netip.Prefix]Entry, bool) (int, error) { return 0, nil }

func benchReconciler(b *testing.B, n int) (*Reconciler, *Desired, []Entry) {
	d := NewDesired()
	d.AllowPrune()
	log := logrus.New()
	log.Out = io.Discard
	r := newReconciler(Config{Mode: ModeVXLAN, LocalIP: netip.MustParseAddr("192.168.1.1"), Desired: d, RecheckInterval: time.Hour}, log)
	r.b = &nullBackend{}
	r.leftoversDone = true
	r.sysctl = func(string, string) (string, error) { return "1", nil }
	all := make([]Entry, 0, n)
	for _, e := range benchEntries(n) {
		all = append(all, e)
	}
	require.True(b, r.reconcile(true))
	return r, d, all
}

// From empty: SetCluster with 100,000 entries and the pass that follows.
func BenchmarkReconcilerFromEmpty100k(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		r, d, all := benchReconciler(b, 100_000)
		b.StartTimer()
		d.SetCluster("b", []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}, all)
		if !r.reconcile(false) {
			b.Fatal(r.Status().LastError)
		}
	}
}

// The periodic re-check over a converged kernel at 100,000.
func BenchmarkReconcilerNoopFull100k(b *testing.B) {
	r, d, all := benchReconciler(b, 100_000)
	d.SetCluster("b", []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}, all)
	require.True(b, r.reconcile(false))
	b.ReportAllocs()
	for b.Loop() {
		if !r.reconcile(true) {
			b.Fatal(r.Status().LastError)
		}
	}
}
