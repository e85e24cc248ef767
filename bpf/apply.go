package bpf

import (
	"fmt"
	"net/netip"

	"github.com/sirupsen/logrus"
)

// Apply changes the ipcache incrementally: it upserts every entry of upserts
// and then deletes every prefix of deletes, leaving all other entries alone.
// Its cost is proportional to len(upserts)+len(deletes), not to the size of
// the ipcache, which makes it the call for a burst of changes on top of a
// large set; Sync remains the call for converging on a whole set (and the
// only one that prunes entries nobody asked to delete).
//
// Input is checked as in Sync (ErrInvalidEntry, ErrConflictingEntries) and
// the map is touched only if all of it is valid; a prefix both upserted and
// deleted is ErrConflictingEntries. Prefixes are masked and IPv4-mapped IPv6
// addresses unmapped, as in Sync.
//
// Apply is idempotent. An upsert the record of the map says is already in
// place is not written, so a repeated Apply reports no change. Deleting a
// prefix that is not in the ipcache is success; Deleted counts only entries
// the kernel actually removed. Deletes always go to the kernel, whatever the
// record says. Writes go in batches where the kernel supports them,
// upserts before deletes.
//
// Apply keeps the same record of the map as Sync, so Sync, Apply and Recheck
// may be mixed freely. Like Sync, the first call after Load, after Recheck
// (unless Entries read the map since) or after a failed write reads the
// whole ipcache once to rebuild the record.
func (d *Datapath) Apply(upserts []Entry, deletes []netip.Prefix) (SyncStats, error) {
	upKeys, upVals, delKeys, err := planApply(upserts, deletes)
	if err != nil {
		return SyncStats{}, err
	}

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

	var stats SyncStats
	// Keep only the upserts that change the map.
	w := 0
	for i, k := range upKeys {
		c, ok := d.cache[k]
		switch {
		case !ok:
			stats.Added++
		case c.have != upVals[i]:
			stats.Updated++
		default:
			continue
		}
		upKeys[w], upVals[w] = k, upVals[i]
		w++
	}
	upKeys, upVals = upKeys[:w], upVals[:w]
	if err := updateIpcache(d.objs.PodmeshIpcache, upKeys, upVals); err != nil {
		d.cache, d.foreign = nil, nil
		return SyncStats{}, err
	}
	for i, k := range upKeys {
		if c, ok := d.cache[k]; ok {
			c.have = upVals[i]
		} else {
			d.cache[k] = &cacheEntry{have: upVals[i]}
		}
	}

	deleted, _, err := deleteIpcache(d.objs.PodmeshIpcache, delKeys)
	stats.Deleted = deleted
	if err != nil {
		d.cache, d.foreign = nil, nil
		return stats, err
	}
	for _, k := range delKeys {
		delete(d.cache, k)
	}
	if stats != (SyncStats{}) {
		d.log.WithFields(logrus.Fields{
			"added":   stats.Added,
			"updated": stats.Updated,
			"deleted": stats.Deleted,
		}).Debug("Applied ipcache changes")
	}
	return stats, nil
}

// planApply validates and encodes the input of Apply: the keys and values to
// upsert (each prefix once) and the keys to delete (each once).
func planApply(upserts []Entry, deletes []netip.Prefix) (upKeys []podmeshIpcacheKey, upVals []podmeshIpcacheValue, delKeys []podmeshIpcacheKey, err error) {
	up := make(map[podmeshIpcacheKey]podmeshIpcacheValue, len(upserts))
	upKeys = make([]podmeshIpcacheKey, 0, len(upserts))
	upVals = make([]podmeshIpcacheValue, 0, len(upserts))
	for _, e := range upserts {
		n, err := e.normalize()
		if err != nil {
			return nil, nil, nil, err
		}
		k, v := encodeKey(n.Prefix), encodeValue(n)
		if old, dup := up[k]; dup {
			if old != v {
				return nil, nil, nil, fmt.Errorf("%w: %s", ErrConflictingEntries, n.Prefix)
			}
			continue
		}
		up[k] = v
		upKeys = append(upKeys, k)
		upVals = append(upVals, v)
	}
	del := make(map[podmeshIpcacheKey]bool, len(deletes))
	delKeys = make([]podmeshIpcacheKey, 0, len(deletes))
	for _, p := range deletes {
		n, err := normalizePrefix(p)
		if err != nil {
			return nil, nil, nil, err
		}
		k := encodeKey(n)
		if _, ok := up[k]; ok {
			return nil, nil, nil, fmt.Errorf("%w: %s both upserted and deleted", ErrConflictingEntries, n)
		}
		if del[k] {
			continue
		}
		del[k] = true
		delKeys = append(delKeys, k)
	}
	return upKeys, upVals, delKeys, nil
}
