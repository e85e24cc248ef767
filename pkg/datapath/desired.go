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

// Object is one prefix of the desired table as the reconciler sees it: the
// entry that wins for the prefix, the revision of its last change and, for a
// prefix no cluster holds any more, Deleted (a tombstone, so that the
// incremental pass learns about the withdrawal).
type Object struct {
	Entry    Entry
	Revision uint64
	Deleted  bool
	changed  time.Time
}

// Desired is the hand-off between the agent's mesh state and the datapath: a
// table of desired objects, one per remote prefix, each with the revision of
// its last change (the cilium/statedb shape). The agent writes it per remote
// cluster; the reconciler reads the objects whose revision moved since its
// last pass (Changes) or all of them (Snapshot), and is woken through
// Changed. It is safe for concurrent use.
//
// Prefixes of different clusters never overlap (the agent refuses a cluster
// whose pod CIDRs overlap another's), so a prefix has at most one owner; if a
// caller does store one prefix under two clusters, the cluster whose name
// sorts first wins, so the result is deterministic.
type Desired struct {
	// mu protects every field below except changed.
	mu       sync.Mutex
	clusters map[string]*desiredCluster
	objects  map[netip.Prefix]*Object // live objects and tombstones
	// byRev indexes objects by revision, oldest first. A slot whose object
	// has moved on to a later revision is stale and skipped; compactLocked
	// drops stale slots and old tombstones.
	byRev        []revSlot
	tombstones   int
	forgotten    uint64 // tombstones up to this revision were dropped
	revision     uint64
	pruneAllowed bool
	slab         []Object // the chunk newObjectLocked carves objects from

	changed chan struct{}
}

type desiredCluster struct {
	podCIDRs []netip.Prefix
	// entries point into one copy of the slice SetCluster was given (an
	// index of pointers builds several times faster than one of values).
	// Read it through index: a large first set is indexed on another
	// goroutine (indexing) after SetCluster returns.
	entries  map[netip.Prefix]*Entry
	indexing sync.WaitGroup
}

// index returns the cluster's entries by prefix, once they are indexed.
func (c *desiredCluster) index() map[netip.Prefix]*Entry {
	c.indexing.Wait()
	return c.entries
}

// indexEntries indexes own (a copy the caller gives up) by prefix; of a
// prefix given twice, the last entry wins.
func indexEntries(own []Entry) map[netip.Prefix]*Entry {
	m := make(map[netip.Prefix]*Entry, len(own))
	for i := range own {
		m[own[i].Prefix] = &own[i]
	}
	return m
}

func sameEntries(a, b map[netip.Prefix]*Entry) bool {
	return maps.EqualFunc(a, b, func(x, y *Entry) bool { return *x == *y })
}

type revSlot struct {
	rev uint64
	obj *Object
}

// tombstonesKept bounds the withdrawn prefixes Desired remembers; a reader
// that falls further behind is told to take a Snapshot.
const tombstonesKept = 1 << 16

// NewDesired returns an empty desired set in which pruning is not yet allowed.
func NewDesired() *Desired {
	return &Desired{
		clusters: make(map[string]*desiredCluster),
		objects:  make(map[netip.Prefix]*Object),
		changed:  make(chan struct{}, 1),
	}
}

// SetCluster replaces every entry of one cluster and the pod CIDRs the
// cluster declares (its cluster-config's, as the mesh admitted them).
// Entries keep their Cluster field as given; callers set it to cluster.
func (d *Desired) SetCluster(cluster string, podCIDRs []netip.Prefix, entries []Entry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.objects) == 0 && len(entries) >= fillMin {
		d.fillLocked(cluster, podCIDRs, entries)
		return
	}
	m := indexEntries(slices.Clone(entries))
	old := d.clusters[cluster]
	if old != nil && sameEntries(old.index(), m) && slices.Equal(old.podCIDRs, podCIDRs) {
		return
	}
	d.clusters[cluster] = &desiredCluster{podCIDRs: slices.Clone(podCIDRs), entries: m}
	if len(m) > 2*len(d.objects) {
		// A large first set (an agent start, a cluster joining): grow the
		// table once rather than step by step.
		d.objects = growMap(d.objects, len(m))
		d.byRev = slices.Grow(d.byRev, len(m))
	}
	now := time.Now()
	moved := false
	// An empty table (an agent start): every entry is a new object.
	fresh := len(d.objects) == 0
	for p, e := range m {
		switch {
		case fresh:
			d.addObjectLocked(p, *e, now)
			moved = true
		case len(d.clusters) == 1:
			// The only cluster: its entry wins without a search.
			moved = d.setObjectLocked(p, *e, true, now) || moved
		default:
			moved = d.resolveLocked(p, now) || moved
		}
	}
	if old != nil {
		for p := range old.index() {
			if _, ok := m[p]; !ok {
				moved = d.resolveLocked(p, now) || moved
			}
		}
	}
	if moved || old == nil || !slices.Equal(old.podCIDRs, podCIDRs) {
		d.bumpLocked(moved)
	}
}

// fillMin is the size from which SetCluster fills an empty table with
// fillLocked.
const fillMin = 1024

// fillLocked is SetCluster into an empty table (an agent start, the first
// cluster joining): every entry is a new object, added in the order given,
// so Changes returns them in that order (a sorted set stays sorted for the
// backends). The cluster's own index is built on another goroutine, which
// the next call that needs it waits for.
func (d *Desired) fillLocked(cluster string, podCIDRs []netip.Prefix, entries []Entry) {
	c := &desiredCluster{podCIDRs: slices.Clone(podCIDRs)}
	own := slices.Clone(entries)
	c.indexing.Go(func() { c.entries = indexEntries(own) })
	d.clusters[cluster] = c
	d.objects = growMap(d.objects, len(entries))
	d.byRev = slices.Grow(d.byRev, len(entries))
	now := time.Now()
	rev := d.revision
	for _, e := range entries {
		d.addObjectLocked(e.Prefix, e, now)
	}
	if len(d.objects) != len(entries) {
		// A prefix given twice: its last entry wins, as in the general
		// case. Start again from the index, once per object.
		clear(d.objects)
		clear(d.byRev)
		d.byRev, d.revision = d.byRev[:0], rev
		for p, e := range c.index() {
			d.addObjectLocked(p, *e, now)
		}
	}
	d.bumpLocked(true)
}

// Upsert adds or replaces one entry of e.Cluster.
func (d *Desired) Upsert(e Entry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.clusters[e.Cluster]
	if c == nil {
		c = &desiredCluster{entries: make(map[netip.Prefix]*Entry)}
		d.clusters[e.Cluster] = c
	}
	if old, ok := c.index()[e.Prefix]; ok && *old == e {
		return
	}
	c.entries[e.Prefix] = &e
	if d.resolveLocked(e.Prefix, time.Now()) {
		d.bumpLocked(true)
	}
}

// Delete removes one prefix of a cluster. Deleting a missing prefix is a no-op.
func (d *Desired) Delete(cluster string, p netip.Prefix) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.clusters[cluster]
	if c == nil {
		return
	}
	if _, ok := c.index()[p]; !ok {
		return
	}
	delete(c.entries, p)
	if d.resolveLocked(p, time.Now()) {
		d.bumpLocked(true)
	}
}

// RemoveCluster withdraws every entry of a cluster and its pod CIDRs.
func (d *Desired) RemoveCluster(cluster string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old, ok := d.clusters[cluster]
	if !ok {
		return
	}
	delete(d.clusters, cluster)
	now := time.Now()
	moved := false
	for p := range old.index() {
		moved = d.resolveLocked(p, now) || moved
	}
	d.bumpLocked(moved && len(old.podCIDRs) == 0)
}

// AllowPrune is called once every remote has synced (or the sync timeout has
// passed). Until then a reconciler adopts and adds, and deletes only what the
// desired set withdrew, never what it merely finds in the kernel, so an agent
// restart withdraws no route.
func (d *Desired) AllowPrune() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pruneAllowed {
		return
	}
	d.pruneAllowed = true
	d.bumpLocked(false)
}

// resolveLocked recomputes the object of prefix p from the clusters' entries
// (the cluster whose name sorts first wins) and gives it a new revision if it
// changed. It reports whether it did.
func (d *Desired) resolveLocked(p netip.Prefix, now time.Time) bool {
	var (
		best  Entry
		owner string
		found bool
	)
	for name, c := range d.clusters {
		if e, ok := c.index()[p]; ok && (!found || name < owner) {
			best, owner, found = *e, name, true
		}
	}
	return d.setObjectLocked(p, best, found, now)
}

// setObjectLocked makes best (found: else a tombstone) the object of prefix
// p, with a new revision if it changed. It reports whether it did.
func (d *Desired) setObjectLocked(p netip.Prefix, best Entry, found bool, now time.Time) bool {
	o := d.objects[p]
	switch {
	case o == nil && !found:
		return false
	case o == nil:
		o = d.newObjectLocked()
		d.objects[p] = o
	case !o.Deleted && found && o.Entry == best:
		return false
	case o.Deleted && !found:
		return false
	}
	if o.Deleted {
		d.tombstones--
	}
	d.revision++
	o.Entry, o.Deleted, o.Revision, o.changed = best, !found, d.revision, now
	if !found {
		o.Entry.Prefix = p
		d.tombstones++
	}
	d.byRev = append(d.byRev, revSlot{rev: d.revision, obj: o})
	if len(d.byRev) > 2*len(d.objects)+1024 || d.tombstones > tombstonesKept {
		d.compactLocked()
	}
	return true
}

// addObjectLocked adds the object of a prefix the table does not hold.
func (d *Desired) addObjectLocked(p netip.Prefix, e Entry, now time.Time) {
	o := d.newObjectLocked()
	d.revision++
	o.Entry, o.Revision, o.changed = e, d.revision, now
	d.objects[p] = o
	d.byRev = append(d.byRev, revSlot{rev: d.revision, obj: o})
}

// objectChunk is how many objects newObjectLocked allocates at once.
const objectChunk = 256

// newObjectLocked returns a new object, carved from a chunk allocated for
// objectChunk of them: one allocation per chunk instead of one per object.
// A chunk lives as long as any of its objects.
func (d *Desired) newObjectLocked() *Object {
	if len(d.slab) == cap(d.slab) {
		d.slab = make([]Object, 0, objectChunk)
	}
	d.slab = d.slab[:len(d.slab)+1]
	return &d.slab[len(d.slab)-1]
}

// compactLocked drops stale revision slots and, when there are too many, the
// older half of the tombstones.
func (d *Desired) compactLocked() {
	if d.tombstones > tombstonesKept {
		var revs []uint64
		for _, o := range d.objects {
			if o.Deleted {
				revs = append(revs, o.Revision)
			}
		}
		slices.Sort(revs)
		cut := revs[len(revs)/2]
		for p, o := range d.objects {
			if o.Deleted && o.Revision <= cut {
				delete(d.objects, p)
				d.tombstones--
			}
		}
		d.forgotten = max(d.forgotten, cut)
	}
	live := d.byRev[:0]
	for _, s := range d.byRev {
		if s.obj.Revision == s.rev && d.objects[s.obj.Entry.Prefix] == s.obj {
			live = append(live, s)
		}
	}
	clear(d.byRev[len(live):]) // let dropped objects go
	d.byRev = live
}

// bumpLocked wakes the reader after a change. A change that moved no
// object (pod CIDRs, the prune permission) still gets a revision of its own,
// so a reader sees it.
func (d *Desired) bumpLocked(objectsMoved bool) {
	if !objectsMoved {
		d.revision++
	}
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// Snapshot is a consistent copy of the desired table.
type Snapshot struct {
	// Entries holds every live object.
	Entries map[netip.Prefix]Entry
	// PodCIDRs are the pod CIDRs every remote cluster declares, by cluster.
	PodCIDRs     map[string][]netip.Prefix
	Revision     uint64
	PruneAllowed bool
}

// Snapshot returns a copy of the whole desired table.
func (d *Desired) Snapshot() Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[netip.Prefix]Entry, len(d.objects)-d.tombstones)
	for p, o := range d.objects {
		if !o.Deleted {
			out[p] = o.Entry
		}
	}
	return Snapshot{Entries: out, PodCIDRs: d.podCIDRsLocked(), Revision: d.revision, PruneAllowed: d.pruneAllowed}
}

func (d *Desired) podCIDRsLocked() map[string][]netip.Prefix {
	out := make(map[string][]netip.Prefix, len(d.clusters))
	for name, c := range d.clusters {
		if len(c.podCIDRs) > 0 {
			out[name] = slices.Clone(c.podCIDRs)
		}
	}
	return out
}

// Changes is what moved in the desired table after a revision.
type Changes struct {
	// Objects are the objects whose revision is above the one asked for,
	// tombstones included, in revision order.
	Objects []Object
	// PodCIDRs, Revision and PruneAllowed are as in Snapshot.
	PodCIDRs     map[string][]netip.Prefix
	Revision     uint64
	PruneAllowed bool
	// Oldest is when the oldest of Objects changed (zero without objects),
	// for the convergence-latency metric.
	Oldest time.Time
}

// Changes returns the objects whose revision moved after rev, in time
// proportional to them. ok is false when tombstones the caller has not seen
// were already forgotten (more than about 65,000 withdrawals since rev); the
// caller then takes a Snapshot.
func (d *Desired) Changes(rev uint64) (c Changes, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := d.changedFromLocked(rev)
	if !ok {
		return Changes{}, false
	}
	c.Objects = make([]Object, 0, len(d.byRev)-i)
	c.Oldest = d.eachChangedLocked(i, func(o *Object) { c.Objects = append(c.Objects, *o) })
	c.PodCIDRs, c.Revision, c.PruneAllowed = d.podCIDRsLocked(), d.revision, d.pruneAllowed
	return c, true
}

// changedEntries is Changes for the reconciler: the entries of the moved
// objects, live ones and tombstones apart, each in revision order, without
// a copy of the objects (c.Objects is nil).
func (d *Desired) changedEntries(rev uint64) (live, gone []Entry, c Changes, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := d.changedFromLocked(rev)
	if !ok {
		return nil, nil, Changes{}, false
	}
	live = make([]Entry, 0, len(d.byRev)-i)
	c.Oldest = d.eachChangedLocked(i, func(o *Object) {
		if o.Deleted {
			gone = append(gone, o.Entry)
		} else {
			live = append(live, o.Entry)
		}
	})
	c.PodCIDRs, c.Revision, c.PruneAllowed = d.podCIDRsLocked(), d.revision, d.pruneAllowed
	return live, gone, c, true
}

// changedFromLocked returns the first revision slot after rev; ok is false
// when tombstones after rev were already forgotten.
func (d *Desired) changedFromLocked(rev uint64) (int, bool) {
	if rev > d.revision || rev < d.forgotten {
		return 0, false
	}
	return sort.Search(len(d.byRev), func(i int) bool { return d.byRev[i].rev > rev }), true
}

// eachChangedLocked calls fn with every object whose current revision has
// a slot from i on, in revision order, and returns when the oldest of them
// changed.
func (d *Desired) eachChangedLocked(i int, fn func(*Object)) (oldest time.Time) {
	for _, s := range d.byRev[i:] {
		// A slot is stale once its object moved on to a later revision.
		// A tombstone compactLocked dropped keeps its revision, but lies
		// at or below d.forgotten, which rev is not below.
		o := s.obj
		if o.Revision != s.rev {
			continue
		}
		if oldest.IsZero() || o.changed.Before(oldest) {
			oldest = o.changed
		}
		fn(o)
	}
	return oldest
}

// oldestSince returns when the oldest object changed after rev changed
// (zero when none did), without copying them.
func (d *Desired) oldestSince(rev uint64) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := sort.Search(len(d.byRev), func(i int) bool { return d.byRev[i].rev > rev })
	return d.eachChangedLocked(i, func(*Object) {})
}

// Version is the table's revision; it increases on every change.
func (d *Desired) Version() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.revision
}

// Changed receives a value after one or more changes. It never blocks the
// writer: changes made while a signal is pending coalesce into it.
func (d *Desired) Changed() <-chan struct{} { return d.changed }
