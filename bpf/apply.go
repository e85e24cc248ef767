package bpf

import (
	"cmp"
	"encoding/binary"
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
	upKeys, upVals, delKeys, err := planApply(upserts, deletes)
	if err != nil {
		return SyncStats{}, err
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return SyncStats{}, ErrClosed
	}
	if err := updateIpcache(d.objs.PodmeshIpcache, upKeys, upVals); err != nil {
		return SyncStats{}, err
	}
	stats := SyncStats{Added: len(upKeys)}
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

// planApply validates and encodes the input of Apply: the keys and values to
// upsert (each prefix once) and the keys to delete (each once), both in key
// order. The trie inserts and removes keys in order markedly faster than in
// random order (consecutive operations walk the same upper nodes), and
// sorted, a repeated prefix is next to its twin.
func planApply(upserts []Entry, deletes []netip.Prefix) (upKeys []podmeshIpcacheKey, upVals []podmeshIpcacheValue, delKeys []podmeshIpcacheKey, err error) {
	recs := make([]ipcacheRecord, 0, len(upserts))
	order := make([]sortedRef, 0, len(upserts))
	for _, e := range upserts {
		n, err := e.normalize()
		if err != nil {
			return nil, nil, nil, err
		}
		k := encodeKey(n.Prefix)
		order = append(order, sortedRef{key: orderOf(k), i: int32(len(recs))})
		recs = append(recs, ipcacheRecord{k, encodeValue(n)})
	}
	// Sorting small fixed keys and gathering the records once is several
	// times cheaper than sorting the records.
	slices.SortFunc(order, func(a, b sortedRef) int { return a.key.compare(b.key) })
	upKeys = make([]podmeshIpcacheKey, 0, len(recs))
	upVals = make([]podmeshIpcacheValue, 0, len(recs))
	for j, o := range order {
		r := recs[o.i]
		if j > 0 && o.key == order[j-1].key {
			if prev := recs[order[j-1].i]; r.v != prev.v {
				return nil, nil, nil, fmt.Errorf("%w: %s", ErrConflictingEntries, keyString(r.k))
			}
			continue
		}
		upKeys = append(upKeys, r.k)
		upVals = append(upVals, r.v)
	}
	delKeys = make([]podmeshIpcacheKey, 0, len(deletes))
	for _, p := range deletes {
		n, err := normalizePrefix(p)
		if err != nil {
			return nil, nil, nil, err
		}
		delKeys = append(delKeys, encodeKey(n))
	}
	slices.SortFunc(delKeys, compareKeys)
	delKeys = slices.Compact(delKeys)
	for _, k := range delKeys {
		if _, found := slices.BinarySearchFunc(upKeys, k, compareKeys); found {
			return nil, nil, nil, fmt.Errorf("%w: %s both upserted and deleted", ErrConflictingEntries, keyString(k))
		}
	}
	return upKeys, upVals, delKeys, nil
}

// keyOrder is a key's place in the trie's order (family, address, prefix
// length) as three integers.
type keyOrder struct{ a, b, c uint64 }

func orderOf(k podmeshIpcacheKey) keyOrder {
	be := binary.BigEndian
	return keyOrder{
		a: uint64(k.Family)<<56 | be.Uint64(k.Addr[0:8])>>8,
		b: be.Uint64(k.Addr[7:15]),
		c: uint64(k.Addr[15])<<32 | uint64(k.Prefixlen),
	}
}

func (o keyOrder) compare(p keyOrder) int {
	if c := cmp.Compare(o.a, p.a); c != 0 {
		return c
	}
	if c := cmp.Compare(o.b, p.b); c != 0 {
		return c
	}
	return cmp.Compare(o.c, p.c)
}

// sortedRef is a record's place in the order and its index.
type sortedRef struct {
	key keyOrder
	i   int32
}

// compareKeys orders keys as the trie lays them out: by the bits it
// matches (family, then address), then by prefix length.
func compareKeys(a, b podmeshIpcacheKey) int { return orderOf(a).compare(orderOf(b)) }
