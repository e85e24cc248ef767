package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
)

// batchSize bounds one batch syscall (and the buffers it needs).
const batchSize = 8192

// SyncStats says what one Sync changed.
type SyncStats struct {
	Added   int // prefixes that were missing
	Updated int // prefixes whose value changed
	Deleted int // prefixes removed because prune was set
}

// Sync makes the ipcache equal entries. It upserts missing and changed
// entries and, when prune is true, deletes every other entry (including ones
// it cannot decode); with prune false it never deletes, which is how an agent
// adopts the ipcache of its predecessor before every remote has synced.
// Additions and updates happen before deletions. Calling Sync again with the
// same entries changes nothing.
//
// Prefixes are masked and IPv4-mapped IPv6 addresses unmapped. An invalid
// entry (ErrInvalidEntry) or one prefix with two different values
// (ErrConflictingEntries) fails the whole Sync before the map is touched.
//
// The first Sync after Load reads the whole ipcache from the kernel; later
// ones diff against a record of what the map holds (that read plus this
// Datapath's own writes), so a Sync costs time in proportion to the number
// of entries given plus the changes, not to a kernel dump. After a failed
// write, and after Recheck, the next Sync reads the kernel again (unless an
// Entries call in between did). For a few changes on a large ipcache, Apply
// costs in proportion to the changes alone.
func (d *Datapath) Sync(entries []Entry, prune bool) (SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return SyncStats{}, ErrClosed
	}
	if d.cache == nil {
		if err := d.readIpcacheLocked(); err != nil {
			return SyncStats{}, err
		}
	}
	// One pass over entries: each is looked up once in the record and marked
	// with this Sync's generation, so a prune needs no second set of the
	// desired keys. Nothing is written before the pass has validated all.
	d.gen++
	gen := d.gen
	var (
		stats           SyncStats
		upKeys, delKeys []podmeshIpcacheKey
		upVals          []podmeshIpcacheValue
		added           = make(map[podmeshIpcacheKey]podmeshIpcacheValue)
	)
	for _, e := range entries {
		n, err := e.normalize()
		if err != nil {
			return SyncStats{}, err
		}
		k, v := encodeKey(n.Prefix), encodeValue(n)
		c, ok := d.cache[k]
		if !ok {
			if old, dup := added[k]; dup {
				if old != v {
					return SyncStats{}, fmt.Errorf("%w: %s", ErrConflictingEntries, n.Prefix)
				}
				continue
			}
			added[k] = v
			upKeys = append(upKeys, k)
			upVals = append(upVals, v)
			stats.Added++
			continue
		}
		if c.gen == gen {
			// Seen before in this Sync: it must ask for the same value.
			if c.want != v {
				return SyncStats{}, fmt.Errorf("%w: %s", ErrConflictingEntries, n.Prefix)
			}
			continue
		}
		c.gen, c.want = gen, v
		if c.have != v {
			upKeys = append(upKeys, k)
			upVals = append(upVals, v)
			stats.Updated++
		}
	}
	if prune {
		delKeys = append(delKeys, d.foreign...)
		for k, c := range d.cache {
			if c.gen != gen {
				delKeys = append(delKeys, k)
			}
		}
	}

	if err := updateIpcache(d.objs.PodmeshIpcache, upKeys, upVals); err != nil {
		d.cache, d.foreign = nil, nil
		return SyncStats{}, err
	}
	for i, k := range upKeys {
		if c, ok := d.cache[k]; ok {
			c.have = upVals[i]
		} else {
			d.cache[k] = &cacheEntry{have: upVals[i], want: upVals[i], gen: gen}
		}
	}
	deleted, missing, err := deleteIpcache(d.objs.PodmeshIpcache, delKeys)
	stats.Deleted = deleted + missing
	if err != nil {
		d.cache, d.foreign = nil, nil
		return stats, err
	}
	for _, k := range delKeys {
		delete(d.cache, k)
	}
	if prune {
		d.foreign = nil
	}
	if stats != (SyncStats{}) {
		d.log.WithFields(logrus.Fields{
			"added":   stats.Added,
			"updated": stats.Updated,
			"deleted": stats.Deleted,
		}).Debug("Synced ipcache")
	}
	return stats, nil
}

// cacheEntry is the record of one ipcache entry.
type cacheEntry struct {
	have podmeshIpcacheValue // what the map holds
	want podmeshIpcacheValue // what the Sync of generation gen asked for
	gen  uint64
}

// Recheck makes the next Sync or Apply read the whole ipcache from the kernel
// instead of trusting its record of the map, so that changes made behind the
// Datapath's back (another writer, an operator with bpftool) are repaired.
// An Entries call in between does that read: its dump becomes the new record.
// The reconciler calls it on its periodic re-check of the kernel.
func (d *Datapath) Recheck() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cache, d.foreign = nil, nil
}

// readIpcacheLocked replaces the record of the ipcache with a dump of it.
func (d *Datapath) readIpcacheLocked() error {
	r := newRecord()
	if err := dumpIpcache(d.objs.PodmeshIpcache, r.add); err != nil {
		return err
	}
	d.cache, d.foreign = r.cache, r.foreign
	return nil
}

// record builds the record of the ipcache from a dump.
type record struct {
	cache   map[podmeshIpcacheKey]*cacheEntry
	foreign []podmeshIpcacheKey
}

func newRecord() *record {
	return &record{cache: make(map[podmeshIpcacheKey]*cacheEntry)}
}

func (r *record) add(k podmeshIpcacheKey, v podmeshIpcacheValue) {
	p, err := decodeKey(k)
	if err != nil {
		// Not ours to interpret, but in our map: a prune removes it.
		r.foreign = append(r.foreign, k)
		return
	}
	// The trie ignores bits past the prefix length, so a key with such
	// bits names the same entry as the canonical one.
	r.cache[encodeKey(p)] = &cacheEntry{have: v}
}

// Entries returns every entry of the ipcache, in map order. Entries that do
// not decode (not written by this version) are left out; a Sync with prune
// removes them. Entries always reads the kernel. When the Datapath has no
// record of the map (after Load, Recheck or a failed write), that read also
// becomes the record, so Recheck, Entries and then Sync or Apply read the
// ipcache once, not twice.
func (d *Datapath) Entries() ([]Entry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	var (
		out []Entry
		r   *record
	)
	if d.cache == nil {
		r = newRecord()
	}
	err := dumpIpcache(d.objs.PodmeshIpcache, func(k podmeshIpcacheKey, v podmeshIpcacheValue) {
		if e, err := decodeEntry(k, v); err == nil {
			out = append(out, e)
		}
		if r != nil {
			r.add(k, v)
		}
	})
	if err != nil {
		return out, err
	}
	if r != nil {
		d.cache, d.foreign = r.cache, r.foreign
	}
	return out, nil
}

// dumpIpcache calls fn for every key and value in the ipcache, reading it in
// batches where the kernel supports that.
func dumpIpcache(m *ebpf.Map, fn func(podmeshIpcacheKey, podmeshIpcacheValue)) error {
	keys := make([]podmeshIpcacheKey, batchSize)
	vals := make([]podmeshIpcacheValue, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) && n == 0 {
			return iterateIpcache(m, fn)
		}
		if err != nil {
			return fmt.Errorf("dump ipcache: %w", err)
		}
	}
}

func iterateIpcache(m *ebpf.Map, fn func(podmeshIpcacheKey, podmeshIpcacheValue)) error {
	var (
		k podmeshIpcacheKey
		v podmeshIpcacheValue
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate ipcache: %w", err)
	}
	return nil
}

// updateIpcache writes keys[i] = vals[i], in batches where possible.
func updateIpcache(m *ebpf.Map, keys []podmeshIpcacheKey, vals []podmeshIpcacheValue) error {
	for start := 0; start < len(keys); start += batchSize {
		end := min(start+batchSize, len(keys))
		n, err := m.BatchUpdate(keys[start:end], vals[start:end], nil)
		if errors.Is(err, ebpf.ErrNotSupported) && n == 0 {
			for i := start; i < end; i++ {
				if err := m.Put(&keys[i], &vals[i]); err != nil {
					return fmt.Errorf("update ipcache entry %s: %w", keyString(keys[i]), err)
				}
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("update ipcache entry %s: %w", keyString(keys[start+n]), err)
		}
	}
	return nil
}

// deleteIpcache deletes keys, in batches where possible. A key that is
// already gone is not an error: it counts as missing, not as deleted.
func deleteIpcache(m *ebpf.Map, keys []podmeshIpcacheKey) (deleted, missing int, err error) {
	for len(keys) > 0 {
		chunk := keys[:min(batchSize, len(keys))]
		n, err := m.BatchDelete(chunk, nil)
		switch {
		case err == nil:
			deleted += n
			keys = keys[len(chunk):]
		case errors.Is(err, ebpf.ErrKeyNotExist):
			// The batch stops at the missing key: skip it and go on.
			deleted += n
			missing++
			keys = keys[n+1:]
		case errors.Is(err, ebpf.ErrNotSupported) && n == 0:
			for i := range chunk {
				err := m.Delete(&chunk[i])
				switch {
				case err == nil:
					deleted++
				case errors.Is(err, ebpf.ErrKeyNotExist):
					missing++
				default:
					return deleted, missing, fmt.Errorf("delete ipcache entry %s: %w", keyString(chunk[i]), err)
				}
			}
			keys = keys[len(chunk):]
		default:
			return deleted + n, missing, fmt.Errorf("delete ipcache entry %s: %w", keyString(chunk[n]), err)
		}
	}
	return deleted, missing, nil
}

func keyString(k podmeshIpcacheKey) string {
	if p, err := decodeKey(k); err == nil {
		return p.String()
	}
	return fmt.Sprintf("%+v", k)
}

// migrateIpcache copies every entry of an ipcache with another layout that
// still decodes as an entry of this version into the new map. An old map
// whose key or value size differs has nothing decodable: it is dropped whole.
func migrateIpcache(from, to *ebpf.Map) (copied, dropped int, err error) {
	if from.KeySize() != to.KeySize() || from.ValueSize() != to.ValueSize() {
		// Count what is lost, so the log says so.
		var k, v []byte
		it := from.Iterate()
		for it.Next(&k, &v) {
			dropped++
		}
		return 0, dropped, nil
	}
	var (
		keys []podmeshIpcacheKey
		vals []podmeshIpcacheValue
	)
	var k podmeshIpcacheKey
	var v podmeshIpcacheValue
	it := from.Iterate()
	for it.Next(&k, &v) {
		e, err := decodeEntry(k, v)
		if err != nil {
			dropped++
			continue
		}
		keys = append(keys, encodeKey(e.Prefix))
		vals = append(vals, encodeValue(e))
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("read old ipcache: %w", err)
	}
	if err := updateIpcache(to, keys, vals); err != nil {
		return 0, 0, err
	}
	return len(keys), dropped, nil
}
