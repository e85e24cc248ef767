package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
)

// batchSize bounds one batch syscall (and the buffers it needs).
const batchSize = 8192

// SyncStats says what one Sync or Apply changed.
type SyncStats struct {
	Added   int // prefixes that were missing (Apply: every upsert it wrote)
	Updated int // prefixes whose value changed (Apply: always 0)
	Deleted int // prefixes removed
}

// Sync makes the ipcache equal entries. It reads the whole ipcache once
// (batched), upserts missing and changed entries and, when prune is true,
// deletes every other entry (including ones it cannot decode); with prune
// false it never deletes, which is how an agent adopts the ipcache of its
// predecessor before every remote has synced. Additions and updates happen
// before deletions. Calling Sync again with the same entries writes nothing,
// and an entry removed or changed behind the Datapath's back is written
// again: Sync trusts only what it has just read.
//
// Prefixes are masked and IPv4-mapped IPv6 addresses unmapped. An invalid
// entry (ErrInvalidEntry) or one prefix with two different values
// (ErrConflictingEntries) fails the whole Sync before the map is touched.
func (d *Datapath) Sync(entries []Entry, prune bool) (SyncStats, error) {
	want := make(map[podmeshIpcacheKey]podmeshIpcacheValue, len(entries))
	for _, e := range entries {
		n, err := e.normalize()
		if err != nil {
			return SyncStats{}, err
		}
		k, v := encodeKey(n.Prefix), encodeValue(n)
		if old, dup := want[k]; dup && old != v {
			return SyncStats{}, fmt.Errorf("%w: %s", ErrConflictingEntries, n.Prefix)
		}
		want[k] = v
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return SyncStats{}, ErrClosed
	}
	var (
		stats   SyncStats
		have    = make(map[podmeshIpcacheKey]podmeshIpcacheValue, len(want))
		delKeys []podmeshIpcacheKey
	)
	dump := Dump{keys: make([]podmeshIpcacheKey, 0, len(want)), vals: make([]podmeshIpcacheValue, 0, len(want))}
	if err := dumpIpcacheInto(d.objs.PodmeshIpcache, &dump); err != nil {
		return SyncStats{}, err
	}
	for i, k := range dump.keys {
		p, err := decodeKey(k)
		if err != nil {
			// Not ours to interpret, but in our map: a prune removes it.
			if prune {
				delKeys = append(delKeys, k)
			}
			continue
		}
		// The trie ignores bits past the prefix length, so a key with
		// such bits names the same entry as the canonical one.
		if c := encodeKey(p); c != k {
			if prune {
				delKeys = append(delKeys, k)
			}
			k = c
		}
		have[k] = dump.vals[i]
	}
	var (
		upKeys []podmeshIpcacheKey
		upVals []podmeshIpcacheValue
	)
	for k, v := range want {
		h, ok := have[k]
		switch {
		case !ok:
			stats.Added++
		case h != v:
			stats.Updated++
		default:
			continue
		}
		upKeys = append(upKeys, k)
		upVals = append(upVals, v)
	}
	if prune {
		for k := range have {
			if _, ok := want[k]; !ok {
				delKeys = append(delKeys, k)
			}
		}
	}
	if err := updateIpcache(d.objs.PodmeshIpcache, upKeys, upVals); err != nil {
		return SyncStats{}, err
	}
	deleted, missing, err := deleteIpcache(d.objs.PodmeshIpcache, delKeys)
	stats.Deleted = deleted + missing
	if err != nil {
		return stats, err
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

// Entries returns every entry of the ipcache, in map order. Entries that do
// not decode (not written by this version) are left out; a Sync with prune
// removes them.
func (d *Datapath) Entries() ([]Entry, error) {
	out, _, err := d.Read()
	return out, err
}

// Read is Entries that also counts the entries it left out because they do
// not decode, so a caller knows whether a pruning Sync has work to do.
func (d *Datapath) Read() (entries []Entry, undecodable int, err error) {
	dump, err := d.Dump()
	if err != nil {
		return nil, 0, err
	}
	entries, undecodable = dump.Entries()
	return entries, undecodable, nil
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
