package bpf

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
)

// Image is a set of ipcache entries in the map's encoding and in the order
// a dump of the map returns them (the trie's order, below). It is what
// Apply writes, and what a caller that knows the whole desired set compares
// a Dump with: equal images are equal sets, entry for entry and byte for
// byte, so comparing them needs neither decoding nor hashing.
type Image struct {
	keys []podmeshIpcacheKey
	vals []podmeshIpcacheValue
}

// NewImage validates, normalises (as Apply: prefixes masked, IPv4-mapped
// addresses unmapped), encodes and orders entries. An invalid entry is
// ErrInvalidEntry, one prefix with two values ErrConflictingEntries; one
// prefix given twice with one value is one entry. Entries already in the
// trie's order (as a sorted desired set usually is) are not sorted again.
func NewImage(entries []Entry) (*Image, error) {
	b := NewImageBuilder(len(entries))
	for _, e := range entries {
		if err := b.Add(e); err != nil {
			return nil, err
		}
	}
	return b.Image()
}

// ImageBuilder makes an Image entry by entry, for a caller that converts
// its own records on the way (NewImage without a slice of Entry between).
type ImageBuilder struct {
	im      Image
	ordered bool
	last    keyOrder
}

// NewImageBuilder returns a builder with room for n entries.
func NewImageBuilder(n int) *ImageBuilder {
	return &ImageBuilder{
		im:      Image{keys: make([]podmeshIpcacheKey, 0, n), vals: make([]podmeshIpcacheValue, 0, n)},
		ordered: true,
	}
}

// Add validates, normalises and encodes e (ErrInvalidEntry).
func (b *ImageBuilder) Add(e Entry) error {
	n, err := e.normalize()
	if err != nil {
		return err
	}
	k := encodeKey(n.Prefix)
	o := orderOf(k)
	if len(b.im.keys) > 0 && o.compare(b.last) < 0 {
		b.ordered = false
	}
	b.last = o
	b.im.keys = append(b.im.keys, k)
	b.im.vals = append(b.im.vals, encodeValue(n))
	return nil
}

// Image orders what was added (unless it came in order), drops repeated
// entries and returns the image (ErrConflictingEntries). The builder is
// not used again.
func (b *ImageBuilder) Image() (*Image, error) {
	im := &b.im
	if !b.ordered {
		im.sort()
	}
	if err := im.dedup(); err != nil {
		return nil, err
	}
	return im, nil
}

// parallelSortMin is the size from which sort sorts two halves at once.
const parallelSortMin = 16384

// sort orders the image. Sorting small fixed keys with an index and
// gathering the records once is several times cheaper than sorting the
// records. A large image is sorted as two halves on two goroutines (a
// whole desired set at an agent start), merged while gathering.
func (im *Image) sort() {
	refs := make([]sortedRef, len(im.keys))
	sortRefs := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			refs[i] = sortedRef{key: orderOf(im.keys[i]), i: int32(i)}
		}
		slices.SortFunc(refs[lo:hi], func(a, b sortedRef) int { return a.key.compare(b.key) })
	}
	half := len(refs)
	if len(refs) >= parallelSortMin {
		half = len(refs) / 2
	}
	var wg sync.WaitGroup
	wg.Go(func() { sortRefs(half, len(refs)) })
	sortRefs(0, half)
	wg.Wait()
	keys := make([]podmeshIpcacheKey, len(refs))
	vals := make([]podmeshIpcacheValue, len(refs))
	l, r := refs[:half], refs[half:]
	for w := range keys {
		var next sortedRef
		if len(r) == 0 || len(l) > 0 && l[0].key.compare(r[0].key) <= 0 {
			next, l = l[0], l[1:]
		} else {
			next, r = r[0], r[1:]
		}
		keys[w], vals[w] = im.keys[next.i], im.vals[next.i]
	}
	im.keys, im.vals = keys, vals
}

// dedup drops repeated keys of an ordered image (they are adjacent) and
// fails on a key with two values.
func (im *Image) dedup() error {
	w := 0
	for i := range im.keys {
		if w > 0 && im.keys[i] == im.keys[w-1] {
			if im.vals[i] != im.vals[w-1] {
				return fmt.Errorf("%w: %s", ErrConflictingEntries, keyString(im.keys[i]))
			}
			continue
		}
		im.keys[w], im.vals[w] = im.keys[i], im.vals[i]
		w++
	}
	im.keys, im.vals = im.keys[:w], im.vals[:w]
	return nil
}

// Len is the number of entries in the image.
func (im *Image) Len() int { return len(im.keys) }

// Matches reports whether the dump holds exactly the entries of im, encoded
// exactly as im encodes them. The kernel returns a dump in the trie's order,
// which is im's, so this is one comparison of two byte images. A dump of
// the same set in another order (which the trie does not produce) does not
// match; a caller then compares entry by entry.
func (s *Dump) Matches(im *Image) bool {
	return im != nil && slices.Equal(s.keys, im.keys) && slices.Equal(s.vals, im.vals)
}

// keyOrder is a key's place in the trie's order, as three integers
// compared in turn.
//
// The kernel's BPF_MAP_GET_NEXT_KEY (and so a batch dump) walks the LPM
// trie in postorder, zero-bit child first: of two prefixes where neither
// contains the other, the one whose first differing bit is 0 comes first;
// a prefix comes after every longer prefix it contains. That is the order
// of the bits the trie matches with every bit past the prefix set to 1
// (a contained prefix then never sorts after its container), and of two
// equal such strings the longer prefix first. The matched bits are the
// family byte and the 16 address bytes (the padding is zero in every key
// podmesh writes): a 136-bit string in a, b and the top byte of c; the low
// byte of c is 255 minus the prefix's bit count, so longer sorts first.
//
// Writing in this order also walks the same upper trie nodes on
// consecutive inserts, which the kernel does markedly faster than
// inserting at random.
type keyOrder struct{ a, b, c uint64 }

func orderOf(k podmeshIpcacheKey) keyOrder {
	be := binary.BigEndian
	bits := 8 + int(k.Prefixlen) - keyPrefixBits // of the 136
	return keyOrder{
		a: fillBits(uint64(k.Family)<<56|be.Uint64(k.Addr[0:8])>>8, bits),
		b: fillBits(be.Uint64(k.Addr[7:15]), bits-64),
		c: fillBits(uint64(k.Addr[15])<<56, bits-128)>>56<<8 | uint64(255-bits),
	}
}

// fillBits sets every bit of x after its n most significant ones.
func fillBits(x uint64, n int) uint64 {
	switch {
	case n <= 0:
		return ^uint64(0)
	case n >= 64:
		return x
	}
	return x | ^uint64(0)>>n
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

// compareKeys orders keys as the trie does.
func compareKeys(a, b podmeshIpcacheKey) int { return orderOf(a).compare(orderOf(b)) }
