package datapath

import (
	"context"
	"errors"
	"io"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeBackend is an in-memory kernel: a map of prefix → entry that the
// operations change like the real backends do.
type fakeBackend struct {
	base
	mu      sync.Mutex
	kernel  map[netip.Prefix]Entry
	fail    map[netip.Prefix]error // prefixes whose writes fail
	reads   int                    // full passes
	updates int                    // update calls without a view (incremental passes)
	// sets is the content of every generation the reconciler named; a
	// generation named again with other content is in misnamed.
	sets     map[uint64]map[netip.Prefix]Entry
	misnamed []uint64
}

// named checks that gen, if nonzero, always names the same content.
func (f *fakeBackend) named(gen uint64, want map[netip.Prefix]Entry) {
	if gen == 0 {
		return
	}
	if f.sets == nil {
		f.sets = map[uint64]map[netip.Prefix]Entry{}
	}
	if seen, ok := f.sets[gen]; !ok {
		f.sets[gen] = maps.Clone(want)
	} else if !maps.Equal(seen, want) {
		f.misnamed = append(f.misnamed, gen)
	}
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{base: base{mtu: 1500}, kernel: map[netip.Prefix]Entry{}, fail: map[netip.Prefix]error{}}
}

func (f *fakeBackend) mode() string { return "fake" }
func (f *fakeBackend) setup() error { return nil }
func (f *fakeBackend) read(want map[netip.Prefix]Entry, gen uint64) (kernelView, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.named(gen, want)
	f.reads++
	v := make(map[netip.Prefix]Entry, len(f.kernel))
	maps.Copy(v, f.kernel)
	return v, nil
}

func (f *fakeBackend) update(kv kernelView, want map[netip.Prefix]Entry, gen uint64) (int, map[netip.Prefix]error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.named(gen, want)
	v, _ := kv.(map[netip.Prefix]Entry)
	if v == nil {
		f.updates++
	}
	written, failed := 0, map[netip.Prefix]error{}
	for p, e := range want {
		if h, ok := v[p]; ok && h == e {
			continue
		}
		if err := f.fail[p]; err != nil {
			failed[p] = err
			continue
		}
		written++
		f.kernel[p] = e
	}
	return written, failed
}

func (f *fakeBackend) write(objs []Entry, gen uint64, _ func(netip.Prefix) bool) (int, map[netip.Prefix]error) {
	return f.update(nil, byPrefix(objs), gen)
}

func (f *fakeBackend) delete(es []Entry) map[netip.Prefix]error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range es {
		delete(f.kernel, e.Prefix)
	}
	return map[netip.Prefix]error{}
}

func (f *fakeBackend) prune(kv kernelView, want map[netip.Prefix]Entry, allowed bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !allowed {
		return 0, nil
	}
	n := 0
	for p := range kv.(map[netip.Prefix]Entry) {
		if _, ok := want[p]; !ok {
			delete(f.kernel, p)
			n++
		}
	}
	return n, nil
}

func (f *fakeBackend) has(p string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.kernel[mustPrefix(p)]
	return ok
}

func newTestReconciler(t *testing.T, d *Desired, b backend) (*Reconciler, map[string]string) {
	t.Helper()
	log := logrus.New()
	log.Out = io.Discard
	r := newReconciler(Config{Mode: "fake", LocalIP: mustAddr("192.168.0.1"), Desired: d, RecheckInterval: time.Hour}, log)
	r.b = b
	if f, ok := b.(*fakeBackend); ok {
		t.Cleanup(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			assert.Empty(t, f.misnamed, "a generation names one valid desired set")
		})
	}
	r.leftoversDone = true
	sysctls := map[string]string{"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0", "net.ipv4.conf.all.rp_filter": "1"}
	r.sysctl = func(name, set string) (string, error) {
		v := sysctls[name]
		if set != "" {
			sysctls[name] = set
		}
		return v, nil
	}
	return r, sysctls
}

func entry(p, ep string) Entry {
	return Entry{Prefix: mustPrefix(p), TunnelEndpoint: mustAddr(ep), ClusterID: 2, Cluster: "b"}
}

func TestReconcilerDeletesOnlyWhatItAddedUntilPruneIsAllowed(t *testing.T) {
	d := NewDesired()
	fb := newFakeBackend()
	fb.kernel[mustPrefix("10.9.0.0/24")] = entry("10.9.0.0/24", "192.168.0.9") // left by a previous agent
	r, sysctls := newTestReconciler(t, d, fb)

	d.Upsert(entry("10.2.0.0/24", "192.168.0.3"))
	d.Upsert(entry("10.2.1.0/24", "192.168.0.4"))
	require.True(t, r.reconcile(true))
	assert.True(t, fb.has("10.2.0.0/24"))
	assert.True(t, fb.has("10.9.0.0/24"), "adopted, not pruned before AllowPrune")
	assert.Equal(t, "1", sysctls["net.ipv4.ip_forward"], "forwarding enabled for the IPv4 prefixes")
	assert.Equal(t, "0", sysctls["net.ipv6.conf.all.forwarding"], "no IPv6 prefix, IPv6 forwarding untouched")
	st := r.Status()
	assert.Equal(t, map[string]int{"b": 2}, st.Programmed)
	assert.Equal(t, d.Version(), st.AppliedVersion)
	assert.Equal(t, "full", st.LastPass)

	// The agent withdraws a prefix this process added: gone at once (delta).
	d.Delete("b", mustPrefix("10.2.1.0/24"))
	require.True(t, r.reconcile(false))
	assert.False(t, fb.has("10.2.1.0/24"))
	assert.True(t, fb.has("10.9.0.0/24"))
	assert.Equal(t, "incremental", r.Status().LastPass)
	assert.Equal(t, 1, fb.updates)

	// A periodic full pass before AllowPrune still keeps the adopted prefix.
	require.True(t, r.reconcile(true))
	assert.True(t, fb.has("10.9.0.0/24"))

	// AllowPrune changes the prune permission: the next pass is full and prunes.
	d.AllowPrune()
	syncs := fb.reads
	require.True(t, r.reconcile(false))
	assert.Equal(t, syncs+1, fb.reads, "a prune permission change forces a full pass")
	assert.False(t, fb.has("10.9.0.0/24"))
	assert.True(t, fb.has("10.2.0.0/24"))
}

func TestReconcilerReportsPerPrefixFailuresAndRetriesInFull(t *testing.T) {
	d := NewDesired()
	fb := newFakeBackend()
	fb.fail[mustPrefix("10.2.1.0/24")] = errors.New("boom")
	r, _ := newTestReconciler(t, d, fb)
	d.Upsert(entry("10.2.0.0/24", "192.168.0.3"))
	d.Upsert(entry("10.2.1.0/24", "192.168.0.4"))
	d.Upsert(Entry{Prefix: mustPrefix("10.2.2.0/24"), TunnelEndpoint: mustAddr("192.168.0.1"), ClusterID: 2, Cluster: "b"}) // this node

	assert.False(t, r.reconcile(true))
	st := r.Status()
	assert.Equal(t, map[string]int{"b": 1}, st.Programmed)
	assert.Equal(t, map[string]int{"b": 2}, st.Failed)
	assert.Contains(t, st.Errors["10.2.1.0/24"], "boom")
	assert.Contains(t, st.Errors["10.2.2.0/24"], "is this node")
	assert.NotEmpty(t, st.LastError)
	assert.EqualValues(t, 1, st.ReconcileErrors)
	assert.Zero(t, st.AppliedVersion, "nothing counts as applied while a prefix fails")

	// After a failure the next pass is full even when woken by a change.
	delete(fb.fail, mustPrefix("10.2.1.0/24"))
	d.Delete("b", mustPrefix("10.2.2.0/24"))
	syncs := fb.reads
	assert.True(t, r.reconcile(false))
	assert.Equal(t, syncs+1, fb.reads)
	st = r.Status()
	assert.Equal(t, map[string]int{"b": 2}, st.Programmed)
	assert.Empty(t, st.Failed)
	assert.Empty(t, st.LastError)
	assert.Equal(t, d.Version(), st.AppliedVersion)
}

func TestReconcilerRunConvergesOnChangesAndObservesLatency(t *testing.T) {
	d := NewDesired()
	fb := newFakeBackend()
	r, _ := newTestReconciler(t, d, fb)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	d.Upsert(entry("10.2.0.0/24", "192.168.0.3"))
	require.Eventually(t, func() bool { return r.Status().AppliedVersion >= d.Version() }, 10*time.Second, time.Millisecond, "not converged")
	assert.True(t, fb.has("10.2.0.0/24"))
	// Run observed a convergence latency sample.
	reg := prometheus.NewPedanticRegistry()
	for _, c := range r.Collectors() {
		require.NoError(t, reg.Register(c))
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var samples uint64
	for _, mf := range mfs {
		if mf.GetName() == "podmesh_datapath_convergence_seconds" {
			samples = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	assert.Positive(t, samples)
}

func TestReconcilerIncrementalPassesFollowMovedRevisionsAndFallBackToFull(t *testing.T) {
	d := NewDesired()
	fb := newFakeBackend()
	r, _ := newTestReconciler(t, d, fb)
	d.SetCluster("b", nil, []Entry{entry("10.2.0.0/24", "192.168.0.3"), entry("10.2.1.0/24", "192.168.0.4")})
	require.True(t, r.reconcile(true))

	// Move one prefix, add one of another cluster: an incremental pass.
	d.Upsert(entry("10.2.1.0/24", "192.168.0.9"))
	c := Entry{Prefix: mustPrefix("10.3.0.0/24"), TunnelEndpoint: mustAddr("192.168.0.7"), ClusterID: 3, Cluster: "c"}
	d.Upsert(c)
	reads := fb.reads
	require.True(t, r.reconcile(false))
	assert.Equal(t, reads, fb.reads, "no full pass")
	st := r.Status()
	assert.Equal(t, "incremental", st.LastPass)
	assert.Equal(t, 2, st.LastWrites, "only the two moved objects were written")
	assert.Equal(t, map[string]int{"b": 2, "c": 1}, st.Programmed)
	assert.Equal(t, d.Version(), st.AppliedVersion)
	fb.mu.Lock()
	assert.Equal(t, mustAddr("192.168.0.9"), fb.kernel[mustPrefix("10.2.1.0/24")].TunnelEndpoint)
	fb.mu.Unlock()

	d.RemoveCluster("c")
	require.True(t, r.reconcile(false))
	assert.False(t, fb.has("10.3.0.0/24"))
	assert.Equal(t, map[string]int{"b": 2}, r.Status().Programmed)

	// A pod CIDR change decides validity anew: a full pass.
	d.SetCluster("b", []netip.Prefix{mustPrefix("10.2.0.0/16")}, []Entry{entry("10.2.0.0/24", "192.168.0.3"), entry("10.2.1.0/24", "192.168.0.9")})
	reads = fb.reads
	require.True(t, r.reconcile(false))
	assert.Equal(t, reads+1, fb.reads)

	// More withdrawals than the desired table remembers: a full pass.
	big := make([]Entry, tombstonesKept+1)
	for i := range big {
		a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		big[i] = Entry{Prefix: netip.PrefixFrom(a, 32), TunnelEndpoint: mustAddr("192.168.0.3"), ClusterID: 4, Cluster: "d"}
	}
	d.SetCluster("d", nil, big)
	require.True(t, r.reconcile(false))
	assert.Equal(t, tombstonesKept+1, r.Status().Programmed["d"])
	d.RemoveCluster("d")
	reads = fb.reads
	require.True(t, r.reconcile(false))
	assert.Equal(t, reads+1, fb.reads, "the tombstones were forgotten: full pass")
	assert.Zero(t, r.Status().Programmed["d"])
	fb.mu.Lock()
	assert.Len(t, fb.kernel, 2, "the full pass deleted what this process saw withdrawn")
	fb.mu.Unlock()
}

func TestReconcilerFullPassCountsAndRepairsObjectsRemovedBehindItsBack(t *testing.T) {
	d := NewDesired()
	fb := newFakeBackend()
	r, _ := newTestReconciler(t, d, fb)
	d.SetCluster("b", nil, []Entry{entry("10.2.0.0/24", "192.168.0.3"), entry("10.2.1.0/24", "192.168.0.4")})
	require.True(t, r.reconcile(true))
	require.True(t, r.reconcile(true))
	assert.Zero(t, r.Status().LastOutOfSync, "a pass over a converged kernel finds nothing out of sync")
	assert.Zero(t, r.Status().LastWrites)

	total := r.Status().OutOfSyncTotal
	fb.mu.Lock()
	delete(fb.kernel, mustPrefix("10.2.1.0/24"))
	fb.mu.Unlock()
	require.True(t, r.reconcile(true))
	st := r.Status()
	assert.Equal(t, 1, st.LastOutOfSync)
	assert.Equal(t, total+1, st.OutOfSyncTotal)
	assert.True(t, fb.has("10.2.1.0/24"), "repaired")
}

func TestReconcilerCountsAnInvalidUnmaskedPrefixAsFailed(t *testing.T) {
	d := NewDesired()
	fb := newFakeBackend()
	r, _ := newTestReconciler(t, d, fb)
	d.Upsert(Entry{Prefix: mustPrefix("10.2.0.9/24"), TunnelEndpoint: mustAddr("192.168.0.1"), ClusterID: 2, Cluster: "b"}) // this node
	assert.False(t, r.reconcile(true))
	st := r.Status()
	assert.Equal(t, map[string]int{"b": 1}, st.Failed)
	assert.Empty(t, st.Programmed)
	assert.Contains(t, st.Errors["10.2.0.0/24"], "is this node")
}

// A full pass names the valid desired set with a generation a backend may
// keep derived state under: whatever the incremental passes before it
// changed (adds, changes, withdrawals, objects turning invalid), one
// generation always names one set (checked by the fake backend).
func TestReconcilerNamesEachValidDesiredSetWithItsOwnGeneration(t *testing.T) {
	d := NewDesired()
	fb := newFakeBackend()
	r, _ := newTestReconciler(t, d, fb)
	cidrs := []netip.Prefix{mustPrefix("10.2.0.0/16")}
	d.SetCluster("b", cidrs, []Entry{entry("10.2.0.0/24", "192.168.0.3"), entry("10.2.1.0/24", "192.168.0.4")})
	require.True(t, r.reconcile(false), "the first objects, named as the whole set")
	require.True(t, r.reconcile(true))
	for _, change := range []func(){
		func() { d.Upsert(entry("10.2.2.0/24", "192.168.0.5")) },
		func() { d.Upsert(entry("10.2.2.0/24", "192.168.0.6")) },
		func() { d.Delete("b", mustPrefix("10.2.0.0/24")) },
		func() { d.Upsert(entry("10.2.1.0/24", "192.168.0.1")) }, // this node: invalid
		func() { d.Upsert(entry("10.2.1.0/24", "192.168.0.4")) },
	} {
		change()
		r.reconcile(false)
		r.reconcile(true)
		r.reconcile(true)
	}
	fb.mu.Lock()
	defer fb.mu.Unlock()
	assert.GreaterOrEqual(t, len(fb.sets), 6, "every set had a name of its own")
}
