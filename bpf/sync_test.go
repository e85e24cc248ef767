package bpf

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/internal/testutils"
)

// genEntries returns n distinct entries: /32s of 10.0.0.0/8 and /128s of
// fd00::/16 alternately, spread over clusters 1..8.
func genEntries(n int) []Entry {
	out := make([]Entry, 0, n)
	for i := range n {
		var p netip.Prefix
		if i%2 == 0 {
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
		} else {
			a := [16]byte{0xfd, 0x00, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}
			p = netip.PrefixFrom(netip.AddrFrom16(a), 128)
		}
		out = append(out, Entry{
			Prefix:         p,
			TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}),
			ClusterID:      uint32(i%8 + 1),
		})
	}
	return out
}

func sortEntries(es []Entry) []Entry {
	es = slices.Clone(es)
	slices.SortFunc(es, func(a, b Entry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return es
}

func TestSync(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	entries := genEntries(20000) // more than two batches

	stats, err := d.Sync(entries, true)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Added: 20000}, stats)
	got, err := d.Entries()
	require.NoError(t, err)
	require.Equal(t, sortEntries(entries), sortEntries(got))

	stats, err = d.Sync(entries, true)
	require.NoError(t, err)
	require.Equal(t, SyncStats{}, stats, "idempotent")

	// Change 10, drop 5, add 3; without prune nothing is deleted.
	next := slices.Clone(entries[5:])
	for i := range 10 {
		next[i].TunnelEndpoint = netip.MustParseAddr("fd77::9")
		next[i].Flags = 1
	}
	next = append(next, Entry{Prefix: netip.MustParsePrefix("10.250.0.0/16"), TunnelEndpoint: netip.MustParseAddr("192.168.9.9"), ClusterID: 9})
	next = append(next, Entry{Prefix: netip.MustParsePrefix("10.250.0.0/24"), TunnelEndpoint: netip.MustParseAddr("192.168.9.9"), ClusterID: 9})
	next = append(next, Entry{Prefix: netip.MustParsePrefix("0.0.0.0/0"), TunnelEndpoint: netip.MustParseAddr("192.168.9.9"), ClusterID: 9})
	stats, err = d.Sync(next, false)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Added: 3, Updated: 10}, stats)
	got, err = d.Entries()
	require.NoError(t, err)
	require.Len(t, got, 20003)

	stats, err = d.Sync(next, true)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Deleted: 5}, stats)
	got, err = d.Entries()
	require.NoError(t, err)
	require.Equal(t, sortEntries(next), sortEntries(got))

	stats, err = d.Sync(nil, true)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Deleted: len(next)}, stats)
	got, err = d.Entries()
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestSyncRejectsBadInputWithoutTouchingTheMap(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	good := append(genEntries(4), Entry{Prefix: netip.MustParsePrefix("10.5.0.0/24"), TunnelEndpoint: netip.MustParseAddr("192.168.0.5"), ClusterID: 5})
	_, err := d.Sync(good, true)
	require.NoError(t, err)

	bad := append(slices.Clone(good[:2]), Entry{Prefix: netip.MustParsePrefix("10.9.0.0/16"), TunnelEndpoint: netip.MustParseAddr("192.168.0.1")})
	_, err = d.Sync(bad, true)
	require.ErrorIs(t, err, ErrInvalidEntry)

	conflict := append(slices.Clone(good), good[0])
	conflict[len(conflict)-1].ClusterID++
	_, err = d.Sync(conflict, true)
	require.ErrorIs(t, err, ErrConflictingEntries)

	// The same prefix twice with one value is fine, as is an unmasked one.
	dup := append(slices.Clone(good), good[0])
	dup[4].Prefix = netip.MustParsePrefix("10.5.0.7/24")
	stats, err := d.Sync(dup, true)
	require.NoError(t, err)
	require.Equal(t, SyncStats{}, stats)

	got, err := d.Entries()
	require.NoError(t, err)
	require.Equal(t, sortEntries(good), sortEntries(got))
}

func TestSyncPrunesUndecodableEntries(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	good := genEntries(2)
	_, err := d.Sync(good, true)
	require.NoError(t, err)
	foreign := encodeKey(netip.MustParsePrefix("10.7.0.0/16"))
	foreign.Family = 42
	require.NoError(t, d.objs.PodmeshIpcache.Put(foreign, encodeValue(good[0])))
	badVal := encodeValue(good[0])
	badVal.EndpointFamily = 0
	require.NoError(t, d.objs.PodmeshIpcache.Put(encodeKey(good[1].Prefix), badVal))

	got, err := d.Entries()
	require.NoError(t, err)
	require.Equal(t, good[:1], got, "undecodable entries are not reported")

	// Sync reads the map every time.
	stats, err := d.Sync(good, false)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Updated: 1}, stats, "a desired prefix with a bad value is rewritten")
	stats, err = d.Sync(good, true)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Deleted: 1}, stats, "a foreign key is pruned")
	got, err = d.Entries()
	require.NoError(t, err)
	require.Equal(t, sortEntries(good), sortEntries(got))
	var k podmeshIpcacheKey
	var v podmeshIpcacheValue
	n := 0
	for it := d.objs.PodmeshIpcache.Iterate(); it.Next(&k, &v); n++ {
	}
	require.Equal(t, 2, n)
}

func TestClosedDatapath(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	require.NoError(t, d.Close())
	require.NoError(t, d.Close(), "Close is idempotent")
	_, err := d.Sync(nil, true)
	require.ErrorIs(t, err, ErrClosed)
	_, err = d.Entries()
	require.ErrorIs(t, err, ErrClosed)
	_, err = d.Counters()
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, d.Attach(1), ErrClosed)
}

func TestLoadValidatesOptions(t *testing.T) {
	testutils.RequireRoot(t)
	dir := testPinDir(t)
	_, err := Load(Options{PinDir: dir, LocalClusterID: 0})
	require.ErrorIs(t, err, ErrInvalidClusterID)
	_, err = Load(Options{PinDir: dir, LocalClusterID: MaxClusterID + 1})
	require.ErrorIs(t, err, ErrInvalidClusterID)

	notBPF := t.TempDir()
	_, err = Load(Options{PinDir: notBPF, LocalClusterID: 1})
	require.ErrorIs(t, err, ErrNotBPFFS)
	entries, err := os.ReadDir(notBPF)
	require.NoError(t, err)
	require.Empty(t, entries)
}

// cpuTime is the user+system CPU time the process has used so far (all
// threads, kernel time of the map syscalls included). The benchmarks report
// it next to wall time because the shared build machine's load inflates
// wall time.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	require.NoError(b, unix.Getrusage(unix.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchmarkSyncEmpty(b *testing.B, n int) {
	testutils.RequireRoot(b)
	entries := genEntries(n)
	d, _ := loadTest(b, 1)
	var cpu time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		_, err := d.Sync(nil, true)
		require.NoError(b, err)
		b.StartTimer()
		c0 := cpuTime(b)
		stats, err := d.Sync(entries, true)
		cpu += cpuTime(b) - c0
		require.NoError(b, err)
		require.Equal(b, n, stats.Added)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/prefix")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

func BenchmarkSyncEmpty(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("prefixes=%d", n), func(b *testing.B) { benchmarkSyncEmpty(b, n) })
	}
}

// BenchmarkSyncChanges measures a Sync of a 100,000-prefix ipcache in which
// 1,000 entries changed: 500 updated, 250 added, 250 removed (prune).
func BenchmarkSyncChanges(b *testing.B) {
	testutils.RequireRoot(b)
	const n = 100_000
	all := genEntries(n + 250)
	base := all[:n]
	changed := slices.Clone(all[250:])
	for i := range 500 {
		changed[i].Flags = 1
	}
	d, _ := loadTest(b, 1)
	_, err := d.Sync(base, true)
	require.NoError(b, err)
	c0 := cpuTime(b)
	b.ResetTimer()
	for i := range b.N {
		want := changed
		if i%2 == 1 {
			want = base
		}
		stats, err := d.Sync(want, true)
		require.NoError(b, err)
		require.Equal(b, SyncStats{Added: 250, Updated: 500, Deleted: 250}, stats)
	}
	b.ReportMetric(float64((cpuTime(b)-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// BenchmarkSyncUnchanged measures the steady state: a Sync of 100,000
// prefixes of which none changed.
func BenchmarkSyncUnchanged(b *testing.B) {
	testutils.RequireRoot(b)
	entries := genEntries(100_000)
	d, _ := loadTest(b, 1)
	_, err := d.Sync(entries, true)
	require.NoError(b, err)
	c0 := cpuTime(b)
	b.ResetTimer()
	for range b.N {
		stats, err := d.Sync(entries, true)
		require.NoError(b, err)
		require.Equal(b, SyncStats{}, stats)
	}
	b.ReportMetric(float64((cpuTime(b)-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

func TestMountBPFFSIsIdempotent(t *testing.T) {
	testutils.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "bpffs")
	require.NoError(t, MountBPFFS(dir))
	t.Cleanup(func() { require.NoError(t, unix.Unmount(dir, unix.MNT_DETACH)) })
	require.NoError(t, MountBPFFS(dir), "already a bpffs: nothing to do")

	info, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	n := 0
	for _, line := range strings.Split(string(info), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			n++
		}
	}
	require.Equal(t, 1, n, "mounted exactly once")
}
