package clustermeshtest

import (
	"maps"
	"net/netip"
	"sync"

	"github.com/podmesh/podmesh/pkg/datapath"
)

// Change is one call the mesh made on the desired set.
type Change struct {
	Cluster string
	// Removed lists the cluster's prefixes the call withdrew.
	Removed []netip.Prefix
	// Entries is the cluster's full set after the call.
	Entries map[netip.Prefix]datapath.Entry
}

// Recorder is a desired set that records every change before passing it on
// to a datapath.Desired, so a test sees even changes that a reader of
// Desired.Changed would see coalesced.
type Recorder struct {
	Desired *datapath.Desired

	// mu protects current, changes, pruneAllowed and wake.
	mu           sync.Mutex
	current      map[string]map[netip.Prefix]datapath.Entry
	changes      []Change
	pruneAllowed bool
	wake         chan struct{}
}

// NewRecorder returns a recorder in front of a new datapath.Desired.
func NewRecorder() *Recorder {
	return &Recorder{Desired: datapath.NewDesired(), current: make(map[string]map[netip.Prefix]datapath.Entry), wake: make(chan struct{})}
}

// SetCluster records and forwards.
func (r *Recorder) SetCluster(cluster string, podCIDRs []netip.Prefix, entries []datapath.Entry) {
	m := make(map[netip.Prefix]datapath.Entry, len(entries))
	for _, e := range entries {
		m[e.Prefix] = e
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recordLocked(cluster, m)
	r.Desired.SetCluster(cluster, podCIDRs, entries)
}

// RemoveCluster records and forwards.
func (r *Recorder) RemoveCluster(cluster string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recordLocked(cluster, nil)
	r.Desired.RemoveCluster(cluster)
}

// AllowPrune records and forwards.
func (r *Recorder) AllowPrune() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pruneAllowed = true
	r.Desired.AllowPrune()
	r.notifyLocked()
}

func (r *Recorder) recordLocked(cluster string, m map[netip.Prefix]datapath.Entry) {
	old := r.current[cluster]
	var removed []netip.Prefix
	for p := range old {
		if _, ok := m[p]; !ok {
			removed = append(removed, p)
		}
	}
	if m == nil {
		delete(r.current, cluster)
	} else {
		r.current[cluster] = m
	}
	r.changes = append(r.changes, Change{Cluster: cluster, Removed: removed, Entries: maps.Clone(m)})
	r.notifyLocked()
}

func (r *Recorder) notifyLocked() {
	close(r.wake)
	r.wake = make(chan struct{})
}

// Cluster returns a copy of one cluster's current entries.
func (r *Recorder) Cluster(cluster string) map[netip.Prefix]datapath.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.current[cluster])
}

// Changes returns every recorded change so far.
func (r *Recorder) Changes() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Change(nil), r.changes...)
}

// PruneAllowed reports whether AllowPrune was called.
func (r *Recorder) PruneAllowed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pruneAllowed
}

// Wait returns a channel closed at the next change.
func (r *Recorder) Wait() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wake
}
