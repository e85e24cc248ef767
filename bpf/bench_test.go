package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/internal/testutils"
)

// The kernel edge of the ipcache at 100,000 entries (/32s over 100
// endpoints, as test/bench-datapath programs them). Root only.

func benchIpcacheEntries(n int) []Entry {
	out := make([]Entry, n)
	for i := range out {
		out[i] = Entry{
			Prefix:         netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}), 32),
			TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, 0, byte(1 + i%100)}),
			ClusterID:      2,
		}
	}
	return out
}

// loadedBench loads a datapath for a benchmark and writes es into its
// ipcache.
func loadedBench(b *testing.B, es []Entry) *Datapath {
	testutils.RequireRoot(b)
	d, _ := loadTest(b, 1)
	_, err := d.Apply(es, nil)
	require.NoError(b, err)
	return d
}

// Overwriting 100,000 entries in place.
func BenchmarkApply100k(b *testing.B) {
	es := benchIpcacheEntries(100_000)
	d := loadedBench(b, es)
	for b.Loop() {
		if _, err := d.Apply(es, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// inBothOrders runs fn as two sub-benchmarks on 100,000 entries: in the
// trie's order, and shuffled.
func inBothOrders(b *testing.B, fn func(b *testing.B, es []Entry)) {
	for _, shuffled := range []bool{false, true} {
		b.Run(fmt.Sprintf("shuffled=%v", shuffled), func(b *testing.B) {
			es := benchIpcacheEntries(100_000)
			if shuffled {
				rand.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
			}
			fn(b, es)
		})
	}
}

// 100,000 entries into an empty ipcache, given in the trie's order and at
// random (Apply sorts those).
func BenchmarkApply100kFromEmpty(b *testing.B) {
	inBothOrders(b, func(b *testing.B, es []Entry) {
		d := loadedBench(b, nil)
		for b.Loop() {
			b.StopTimer()
			_, err := d.Sync(nil, true)
			require.NoError(b, err)
			b.StartTimer()
			if _, err := d.Apply(es, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkRead100k(b *testing.B) {
	es := benchIpcacheEntries(100_000)
	d := loadedBench(b, es)
	b.ReportAllocs()
	for b.Loop() {
		got, _, err := d.Read()
		if err != nil || len(got) != len(es) {
			b.Fatalf("read %d entries: %v", len(got), err)
		}
	}
}

// The full pass's read over a converged ipcache: the dump and its
// comparison with the desired image.
func BenchmarkDumpMatches100k(b *testing.B) {
	es := benchIpcacheEntries(100_000)
	d := loadedBench(b, es)
	want, err := NewImage(es)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		dump, err := d.Dump()
		if err != nil || !dump.Matches(want) {
			b.Fatalf("dump of %d entries differs: %v", dump.Len(), err)
		}
	}
}

// The Go side of Apply at 100,000 entries, given in the trie's order and
// at random: validation, encoding, the sort into the trie's order and
// deduplication.
func BenchmarkPlanApply100k(b *testing.B) {
	inBothOrders(b, func(b *testing.B, es []Entry) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := planApply(es, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
