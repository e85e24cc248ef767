package datapath

import (
	"io"
	"net/netip"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

// The ebpf mode's passes at 100,000 prefixes against a real kernel, in a
// namespace of their own (root only): the privileged counterpart of the
// nullBackend benchmarks, for CPU profiles of the whole pass. The
// end-to-end numbers come from test/bench-datapath.

var benchCIDR = netip.MustParsePrefix("100.64.0.0/10")

// benchEBPF is one node namespace and pin directory for the benchmarks.
type benchEBPF struct {
	node *datapathtest.Node
	root string
}

func newBenchEBPF(b *testing.B) *benchEBPF {
	testutils.RequireRoot(b)
	root := datapathtest.BPFRoot(b)
	lab := datapathtest.NewLab(b, datapathtest.LabOptions{})
	return &benchEBPF{node: lab.AddNode("n1", "a", 1, "10.1.0.0/24"), root: root}
}

// reconciler starts a reconciler on an empty desired set (prune allowed),
// as an agent does, and runs its first pass; stop releases it.
func (e *benchEBPF) reconciler(b *testing.B) (r *Reconciler, d *Desired, stop func()) {
	d = NewDesired()
	d.AllowPrune()
	log := logrus.New()
	log.Out = io.Discard
	r, err := New(Config{Mode: ModeEBPF, LocalIP: e.node.IP, NetNS: e.node.NS.Path, BPFRoot: e.root, LocalClusterID: 1, Desired: d, Log: log})
	require.NoError(b, err)
	require.True(b, r.reconcile(true), r.Status().LastError)
	return r, d, func() {
		r.b.close()
		r.closeHandles()
	}
}

// From empty: SetCluster with 100,000 entries on a fresh desired set and
// the pass that follows, as an agent start.
func BenchmarkEBPFFromEmpty100k(b *testing.B) {
	all := benchSlice(100_000)
	e := newBenchEBPF(b)
	for b.Loop() {
		b.StopTimer()
		r, d, stop := e.reconciler(b)
		b.StartTimer()
		d.SetCluster("b", []netip.Prefix{benchCIDR}, all)
		if !r.reconcile(false) {
			b.Fatal(r.Status().LastError)
		}
		b.StopTimer()
		d.RemoveCluster("b")
		require.True(b, r.reconcile(true), r.Status().LastError)
		stop()
		b.StartTimer()
	}
}

// The periodic re-check over a converged kernel at 100,000.
func BenchmarkEBPFNoopFull100k(b *testing.B) {
	r, d, stop := newBenchEBPF(b).reconciler(b)
	defer stop()
	d.SetCluster("b", []netip.Prefix{benchCIDR}, benchSlice(100_000))
	require.True(b, r.reconcile(false), r.Status().LastError)
	for b.Loop() {
		if !r.reconcile(true) {
			b.Fatal(r.Status().LastError)
		}
		if s := r.Status(); s.LastWrites != 0 {
			b.Fatalf("a pass over a converged kernel wrote %d", s.LastWrites)
		}
	}
}
