package datapath

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"
)

// Entry is one desired remote prefix: traffic to Prefix goes to the remote
// node TunnelEndpoint of cluster ClusterID.
type Entry struct {
	Prefix         netip.Prefix
	TunnelEndpoint netip.Addr
	ClusterID      uint32
	Cluster        string
}

func (e Entry) String() string {
	return fmt.Sprintf("%s via %s (cluster %s/%d)", e.Prefix, e.TunnelEndpoint, e.Cluster, e.ClusterID)
}

// Desired is the hand-off between the agent's mesh state and the datapath:
// the full desired set of remote prefixes, kept per remote cluster. The agent
// writes it; the reconciler reads snapshots of it and is woken through
// Changed. It is safe for concurrent use.
//
// Prefixes of different clusters never overlap (the agent refuses a cluster
// whose pod CIDRs overlap another's), so a prefix has at most one owner; if a
// caller does store one prefix under two clusters, the cluster whose name
// sorts first wins in Snapshot, so the result is deterministic.
type Desired struct {
	// mu protects byCluster, podCIDRs, version, pruneAllowed, changes, journal and
	// journalFrom.
	mu           sync.Mutex
	byCluster    map[string]map[netip.Prefix]Entry
	podCIDRs     map[string][]netip.Prefix
	version      uint64
	pruneAllowed bool
	changes      []change // bounded, oldest first; see ChangedAfter
	// journal lists the prefixes each version touched, oldest first; it
	// holds every change with a version above journalFrom (ChangesSince).
	journal     []journalEntry
	journalFrom uint64

	changed chan struct{}
}

// NewDesired returns an empty desired set in which pruning is not yet allowed.
func NewDesired() *Desired {
	return &Desired{
		byCluster: make(map[string]map[netip.Prefix]Entry),
		podCIDRs:  make(map[string][]netip.Prefix),
		changed:   make(chan struct{}, 1),
	}
}

// SetCluster replaces every entry of one cluster and the pod CIDRs the
// cluster declares (its cluster-config's, as the mesh admitted them).
// Entries keep their Cluster field as given; callers set it to cluster.
func (d *Desired) SetCluster(cluster string, podCIDRs []netip.Prefix, entries []Entry) {
	m := make(map[netip.Prefix]Entry, len(entries))
	for _, e := range entries {
		m[e.Prefix] = e
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	old, ok := d.byCluster[cluster]
	if ok && maps.Equal(old, m) && slices.Equal(d.podCIDRs[cluster], podCIDRs) {
		return
	}
	d.byCluster[cluster] = m
	d.podCIDRs[cluster] = slices.Clone(podCIDRs)
	d.bumpLocked()
	var touched []netip.Prefix
	for p, e := range m {
		if o, ok := old[p]; !ok || o != e {
			touched = append(touched, p)
		}
	}
	for p := range old {
		if _, ok := m[p]; !ok {
			touched = append(touched, p)
		}
	}
	d.journalLocked(touched...)
}

// Upsert adds or replaces one entry of e.Cluster.
func (d *Desired) Upsert(e Entry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.byCluster[e.Cluster]
	if m == nil {
		m = make(map[netip.Prefix]Entry)
		d.byCluster[e.Cluster] = m
	}
	if old, ok := m[e.Prefix]; ok && old == e {
		return
	}
	m[e.Prefix] = e
	d.bumpLocked()
	d.journalLocked(e.Prefix)
}

// Delete removes one prefix of a cluster. Deleting a missing prefix is a no-op.
func (d *Desired) Delete(cluster string, p netip.Prefix) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.byCluster[cluster]
	if _, ok := m[p]; !ok {
		return
	}
	delete(m, p)
	d.bumpLocked()
	d.journalLocked(p)
}

// RemoveCluster withdraws every entry of a cluster.
func (d *Desired) RemoveCluster(cluster string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old, ok := d.byCluster[cluster]
	if !ok {
		return
	}
	delete(d.byCluster, cluster)
	delete(d.podCIDRs, cluster)
	d.bumpLocked()
	touched := make([]netip.Prefix, 0, len(old))
	for p := range old {
		touched = append(touched, p)
	}
	d.journalLocked(touched...)
}

// AllowPrune is called once every remote has synced (or the sync timeout has
// passed). Until then a reconciler adopts and adds, but deletes nothing it
// finds in the kernel, so an agent restart withdraws no route.
func (d *Desired) AllowPrune() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pruneAllowed {
		return
	}
	d.pruneAllowed = true
	d.bumpLocked()
}

// Snapshot is a consistent copy of the desired set.
type Snapshot struct {
	Entries      map[netip.Prefix]Entry
	Version      uint64
	PruneAllowed bool
}

// Snapshot returns a copy of the whole desired set.
func (d *Desired) Snapshot() Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, m := range d.byCluster {
		n += len(m)
	}
	out := make(map[netip.Prefix]Entry, n)
	for cluster, m := range d.byCluster {
		for p, e := range m {
			if old, ok := out[p]; ok && old.Cluster < cluster {
				continue
			}
			out[p] = e
		}
	}
	return Snapshot{Entries: out, Version: d.version, PruneAllowed: d.pruneAllowed}
}

// ClusterEntries returns a copy of one cluster's entries.
func (d *Desired) ClusterEntries(cluster string) []Entry {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Entry, 0, len(d.byCluster[cluster]))
	for _, e := range d.byCluster[cluster] {
		out = append(out, e)
	}
	return out
}

// Version increases on every change.
func (d *Desired) Version() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.version
}

// Changed receives a value after one or more changes. It never blocks the
// writer: changes made while a signal is pending coalesce into it.
func (d *Desired) Changed() <-chan struct{} { return d.changed }

type journalEntry struct {
	version uint64
	prefix  netip.Prefix
}

// journalMax bounds the journal; a reader that falls further behind takes a
// Snapshot instead.
const journalMax = 1 << 16

// journalLocked records that the current version touched prefixes.
func (d *Desired) journalLocked(prefixes ...netip.Prefix) {
	if len(prefixes) > journalMax {
		d.journal, d.journalFrom = d.journal[:0], d.version
		return
	}
	for len(d.journal)+len(prefixes) > journalMax {
		// Drop the oldest half, cutting between two versions.
		cut := max(len(d.journal)/2, 1)
		for cut < len(d.journal) && cut > 0 && d.journal[cut].version == d.journal[cut-1].version {
			cut++
		}
		if cut == len(d.journal) {
			d.journal, d.journalFrom = d.journal[:0], d.version-1
			break
		}
		d.journalFrom = d.journal[cut-1].version
		d.journal = append(d.journal[:0], d.journal[cut:]...)
	}
	for _, p := range prefixes {
		d.journal = append(d.journal, journalEntry{version: d.version, prefix: p})
	}
}

// Change is the current state of one prefix that changed: its entry, or
// Present false when no cluster holds it any more.
type Change struct {
	Prefix  netip.Prefix
	Entry   Entry
	Present bool
}

// ChangesSince returns the current state of every prefix that changed after
// version v, the current version and whether pruning is allowed, in one
// consistent view. ok is false when the journal no longer reaches back to v
// (more than about 65,000 prefix changes since); the caller then takes a
// Snapshot. It lets a reader keep a copy of the set up to date in time
// proportional to the changes rather than to the set.
func (d *Desired) ChangesSince(v uint64) (changes []Change, version uint64, pruneAllowed bool, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v > d.version || v < d.journalFrom {
		return nil, d.version, d.pruneAllowed, false
	}
	i := sort.Search(len(d.journal), func(i int) bool { return d.journal[i].version > v })
	seen := make(map[netip.Prefix]bool, len(d.journal)-i)
	for _, j := range d.journal[i:] {
		if seen[j.prefix] {
			continue
		}
		seen[j.prefix] = true
		e, present := d.lookupLocked(j.prefix)
		changes = append(changes, Change{Prefix: j.prefix, Entry: e, Present: present})
	}
	return changes, d.version, d.pruneAllowed, true
}

// lookupLocked resolves a prefix as Snapshot does: the cluster whose name
// sorts first wins.
func (d *Desired) lookupLocked(p netip.Prefix) (Entry, bool) {
	var (
		best        Entry
		bestCluster string
		found       bool
	)
	for cluster, m := range d.byCluster {
		e, ok := m[p]
		if ok && (!found || cluster < bestCluster) {
			best, bestCluster, found = e, cluster, true
		}
	}
	return best, found
}

// change records when a run of versions began: changes within
// changeCoalesce of the previous record share it, so a burst of many
// upserts costs one record.
type change struct {
	first uint64
	at    time.Time
}

const (
	changesKept    = 1024
	changeCoalesce = time.Millisecond
)

// ChangedAfter returns when the first change after version v was made, for
// the convergence-latency metric (accurate to about a millisecond). found is
// false when no change after v is recorded. When the record of that change
// has been dropped (more than changesKept bursts ago), the oldest record is
// returned, which underestimates.
func (d *Desired) ChangedAfter(v uint64) (at time.Time, found bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v >= d.version || len(d.changes) == 0 {
		return time.Time{}, false
	}
	// Last record whose run starts at or before v+1.
	i := sort.Search(len(d.changes), func(i int) bool { return d.changes[i].first > v+1 })
	if i == 0 {
		return d.changes[0].at, true
	}
	return d.changes[i-1].at, true
}

func (d *Desired) bumpLocked() {
	d.version++
	now := time.Now()
	if n := len(d.changes); n == 0 || now.Sub(d.changes[n-1].at) > changeCoalesce {
		if n == changesKept {
			copy(d.changes, d.changes[1:])
			d.changes = d.changes[:n-1]
		}
		d.changes = append(d.changes, change{first: d.version, at: now})
	}
	select {
	case d.changed <- struct{}{}:
	default:
	}
}
