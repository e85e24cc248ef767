package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Dump is one read of the ipcache, kept as the kernel's raw keys and values:
// reading costs one copy, and a caller that only needs to know whether the
// map holds a given set compares the dump with that set's Image without
// decoding anything.
type Dump struct {
	keys []podmeshIpcacheKey
	vals []podmeshIpcacheValue
}

// Dump reads the whole ipcache, in batches where the kernel supports that.
func (d *Datapath) Dump() (*Dump, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	// The size of the last dump is a good guess at this one's.
	n := max(d.lastDump+d.lastDump/8, batchSize)
	out := &Dump{keys: make([]podmeshIpcacheKey, 0, n), vals: make([]podmeshIpcacheValue, 0, n)}
	err := dumpIpcacheInto(d.objs.PodmeshIpcache, out)
	if err != nil {
		return nil, err
	}
	d.lastDump = len(out.keys)
	return out, nil
}

// dumpIpcacheInto appends every entry of m to out, reading straight into
// out's spare capacity.
func dumpIpcacheInto(m *ebpf.Map, out *Dump) error {
	var cursor ebpf.MapBatchCursor
	for {
		if cap(out.keys)-len(out.keys) < batchSize {
			out.keys = append(out.keys, make([]podmeshIpcacheKey, batchSize)...)[:len(out.keys)]
			out.vals = append(out.vals, make([]podmeshIpcacheValue, batchSize)...)[:len(out.vals)]
		}
		l := len(out.keys)
		n, err := m.BatchLookup(&cursor, out.keys[l:l+batchSize], out.vals[l:l+batchSize], nil)
		out.keys, out.vals = out.keys[:l+n], out.vals[:l+n]
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) && n == 0 {
			return iterateIpcache(m, func(k podmeshIpcacheKey, v podmeshIpcacheValue) {
				out.keys = append(out.keys, k)
				out.vals = append(out.vals, v)
			})
		}
		if err != nil {
			return fmt.Errorf("dump ipcache: %w", err)
		}
	}
}

// Len is the number of entries read, decodable or not.
func (s *Dump) Len() int { return len(s.keys) }

// Entries decodes the dump. Entries that do not decode (not written by this
// version) are left out and counted.
func (s *Dump) Entries() (entries []Entry, undecodable int) {
	entries = make([]Entry, 0, len(s.keys))
	for i := range s.keys {
		if e, err := decodeEntry(s.keys[i], s.vals[i]); err == nil {
			entries = append(entries, e)
		} else {
			undecodable++
		}
	}
	return entries, undecodable
}
