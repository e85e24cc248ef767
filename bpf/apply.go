package bpf

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/sirupsen/logrus"
)

// Apply changes the ipcache incrementally: it upserts every entry of upserts
// and then deletes every prefix of deletes, leaving all other entries alone.
// It does not read the map, so its cost is proportional to
// len(upserts)+len(deletes), not to the size of the ipcache: the call for a
// burst of changes on top of a large set. Sync remains the call for
// converging on a whole set (and the only one that prunes entries nobody
// asked to delete).
//
// Input is checked as in Sync (ErrInvalidEntry, ErrConflictingEntries) and
// the map is touched only if all of it is valid; a prefix both upserted and
// deleted is ErrConflictingEntries. Prefixes are masked and IPv4-mapped IPv6
// addresses unmapped, as in Sync.
//
// Apply is idempotent: an upsert overwrites whatever the map holds for the
// prefix, so Added counts every upsert written. Deleting a prefix that is not
// in the ipcache is success; Deleted counts only entries the kernel actually
// removed. Writes go in batches where the kernel supports them, upserts
// before deletes.
func (d *Datapath) Apply(upserts []Entry, deletes []netip.Prefix) (SyncStats, error) {
	up, delKeys, err := planApply(upserts, deletes)
	if err != nil {
		return SyncStats{}, err
	}
	return d.apply(up, delKeys)
}

// Write upserts every entry of im, as Apply does with the entries im was
// made of: for a caller that keeps the image to compare dumps with.
func (d *Datapath) Write(im *Image) (SyncStats, error) {
	return d.apply(im, nil)
}

func (d *Datapath) apply(up *Image, delKeys []podmeshIpcacheKey) (SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return SyncStats{}, ErrClosed
	}
	if err := updateIpcache(d.objs.PodmeshIpcache, up.keys, up.vals); err != nil {
		return SyncStats{}, err
	}
	stats := SyncStats{Added: up.Len()}
	deleted, _, err := deleteIpcache(d.objs.PodmeshIpcache, delKeys)
	stats.Deleted = deleted
	if err != nil {
		return stats, err
	}
	if stats != (SyncStats{}) {
		d.log.WithFields(logrus.Fields{
			"written": stats.Added,
			"deleted": stats.Deleted,
		}).Debug("Applied ipcache changes")
	}
	return stats, nil
}

// planApply validates and encodes the input of Apply: the image to upsert
// and the keys to delete (each once), both in the trie's order, in which
// the kernel inserts and removes markedly faster, and a repeated key lies
// next to its twin.
func planApply(upserts []Entry, deletes []netip.Prefix) (*Image, []podmeshIpcacheKey, error) {
	up, err := NewImage(upserts)
	if err != nil {
		return nil, nil, err
	}
	delKeys := make([]podmeshIpcacheKey, 0, len(deletes))
	for _, p := range deletes {
		n, err := normalizePrefix(p)
		if err != nil {
			return nil, nil, err
		}
		delKeys = append(delKeys, encodeKey(n))
	}
	slices.SortFunc(delKeys, compareKeys)
	delKeys = slices.Compact(delKeys)
	for _, k := range delKeys {
		if _, found := slices.BinarySearchFunc(up.keys, k, compareKeys); found {
			return nil, nil, fmt.Errorf("%w: %s both upserted and deleted", ErrConflictingEntries, keyString(k))
		}
	}
	return up, delKeys, nil
}
