package bpf

import (
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

func BenchmarkApply100k(b *testing.B) {
	testutils.RequireRoot(b)
	d, _ := loadTest(b, 1)
	es := benchIpcacheEntries(100_000)
	for b.Loop() {
		if _, err := d.Apply(es, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRead100k(b *testing.B) {
	testutils.RequireRoot(b)
	d, _ := loadTest(b, 1)
	es := benchIpcacheEntries(100_000)
	_, err := d.Apply(es, nil)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		got, _, err := d.Read()
		if err != nil || len(got) != len(es) {
			b.Fatalf("read %d entries: %v", len(got), err)
		}
	}
}

func BenchmarkDumpDigest100k(b *testing.B) {
	testutils.RequireRoot(b)
	d, _ := loadTest(b, 1)
	es := benchIpcacheEntries(100_000)
	_, err := d.Apply(es, nil)
	require.NoError(b, err)
	var want Digest
	for _, e := range es {
		require.NoError(b, want.Add(e))
	}
	b.ReportAllocs()
	for b.Loop() {
		dump, err := d.Dump()
		if err != nil || dump.Digest() != want {
			b.Fatalf("dump of %d entries differs: %v", dump.Len(), err)
		}
	}
}

func BenchmarkApply100kShuffled(b *testing.B) {
	testutils.RequireRoot(b)
	d, _ := loadTest(b, 1)
	es := benchIpcacheEntries(100_000)
	rand.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
	for b.Loop() {
		b.StopTimer()
		_, err := d.Sync(nil, true)
		require.NoError(b, err)
		b.StartTimer()
		if _, err := d.Apply(es, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkApply100kSorted(b *testing.B) {
	testutils.RequireRoot(b)
	d, _ := loadTest(b, 1)
	es := benchIpcacheEntries(100_000)
	for b.Loop() {
		b.StopTimer()
		_, err := d.Sync(nil, true)
		require.NoError(b, err)
		b.StartTimer()
		if _, err := d.Apply(es, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// The Go side of Apply at 100,000 entries in random order: validation,
// encoding, the sort into the trie's order and deduplication.
func BenchmarkPlanApply100kShuffled(b *testing.B) {
	es := benchIpcacheEntries(100_000)
	rand.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := planApply(es, nil); err != nil {
			b.Fatal(err)
		}
	}
}
