package bpf

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/internal/testutils"
)

func entry(prefix, endpoint string, clusterID uint32) Entry {
	return Entry{Prefix: netip.MustParsePrefix(prefix), TunnelEndpoint: netip.MustParseAddr(endpoint), ClusterID: clusterID}
}

func prefixes(ps ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// TestApplyIsIncrementalIdempotentAndDeletesMissingKeysAsSuccess runs a
// sequence of Apply calls on one ipcache; after each, the map must hold
// exactly the expected entries and the stats must say what changed.
func TestApplyIsIncrementalIdempotentAndDeletesMissingKeysAsSuccess(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	base := sampleEntries()
	_, err := d.Sync(base, true)
	require.NoError(t, err)

	for _, step := range []struct {
		name      string
		upserts   []Entry
		deletes   []netip.Prefix
		wantStats SyncStats
		want      []Entry
	}{{
		name:      "adds leave the other entries alone",
		upserts:   []Entry{entry("10.2.3.0/24", "192.168.1.4", 4), entry("fd00:2::9/128", "fd77::4", 4)},
		wantStats: SyncStats{Added: 2},
		want:      append(slices.Clone(base), entry("10.2.3.0/24", "192.168.1.4", 4), entry("fd00:2::9/128", "fd77::4", 4)),
	}, {
		name:      "the same Apply again writes the same entries and leaves the map as it was",
		upserts:   []Entry{entry("10.2.3.0/24", "192.168.1.4", 4), entry("fd00:2::9/128", "fd77::4", 4)},
		wantStats: SyncStats{Added: 2},
		want:      append(slices.Clone(base), entry("10.2.3.0/24", "192.168.1.4", 4), entry("fd00:2::9/128", "fd77::4", 4)),
	}, {
		name:      "a changed value overwrites; unmasked and IPv4-mapped prefixes name the same entry",
		upserts:   []Entry{entry("10.2.3.77/24", "192.168.1.5", 5), entry("::ffff:10.3.0.0/112", "::ffff:192.168.1.3", 3)},
		wantStats: SyncStats{Added: 2},
		want:      append(slices.Clone(base), entry("10.2.3.0/24", "192.168.1.5", 5), entry("fd00:2::9/128", "fd77::4", 4)),
	}, {
		name:      "deletes remove exactly the given prefixes; missing ones are success and not counted",
		deletes:   prefixes("10.2.3.0/24", "10.9.0.0/16", "fd00:2::9/128", "fd00:9::/64", "10.2.3.0/24"),
		wantStats: SyncStats{Deleted: 2},
		want:      base,
	}, {
		name:    "deleting only missing prefixes is success",
		deletes: prefixes("10.2.3.0/24", "fd00:2::9/128", "0.0.0.0/0", "::/0"),
		want:    base,
	}, {
		name:      "upserts and deletes in one call",
		upserts:   []Entry{entry("0.0.0.0/0", "192.168.1.6", 6)},
		deletes:   prefixes("10.3.0.0/16", "::ffff:10.2.0.0/112"),
		wantStats: SyncStats{Added: 1, Deleted: 2},
		want:      []Entry{entry("fd00:2::/64", "fd77::2", 2), entry("0.0.0.0/0", "192.168.1.6", 6)},
	}, {
		name: "nothing to do",
		want: []Entry{entry("fd00:2::/64", "fd77::2", 2), entry("0.0.0.0/0", "192.168.1.6", 6)},
	}} {
		stats, err := d.Apply(step.upserts, step.deletes)
		require.NoError(t, err, step.name)
		require.Equal(t, step.wantStats, stats, step.name)
		got, err := d.Entries()
		require.NoError(t, err, step.name)
		require.Equal(t, sortEntries(step.want), sortEntries(got), step.name)
	}

	// Apply left the map as a Sync would: a Sync of what it holds changes
	// nothing.
	want := []Entry{entry("fd00:2::/64", "fd77::2", 2), entry("0.0.0.0/0", "192.168.1.6", 6)}
	stats, err := d.Sync(want, true)
	require.NoError(t, err)
	require.Equal(t, SyncStats{}, stats, "Sync after Apply")
}

func TestApplyRejectsBadInputWithoutTouchingTheMap(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	good := []Entry{entry("10.2.0.0/16", "192.168.1.2", 2), entry("fd00:2::/64", "fd77::2", 2)}
	_, err := d.Sync(good, true)
	require.NoError(t, err)
	add := entry("10.4.0.0/16", "192.168.1.4", 4)

	for _, tc := range []struct {
		name    string
		upserts []Entry
		deletes []netip.Prefix
		wantErr error
	}{
		{"invalid prefix", []Entry{add, {TunnelEndpoint: netip.MustParseAddr("192.168.1.9"), ClusterID: 9}}, nil, ErrInvalidEntry},
		{"invalid endpoint", []Entry{add, {Prefix: netip.MustParsePrefix("10.9.0.0/16"), ClusterID: 9}}, nil, ErrInvalidEntry},
		{"cluster 0", []Entry{add, entry("10.9.0.0/16", "192.168.1.9", 0)}, nil, ErrInvalidEntry},
		{"cluster above MaxClusterID", []Entry{add, entry("10.9.0.0/16", "192.168.1.9", MaxClusterID+1)}, nil, ErrInvalidEntry},
		{"invalid prefix to delete", []Entry{add}, []netip.Prefix{{}}, ErrInvalidEntry},
		{"IPv4-mapped prefix to delete shorter than /96", []Entry{add}, prefixes("::ffff:0.0.0.0/80"), ErrInvalidEntry},
		{"one prefix, two values", []Entry{add, entry("10.4.0.9/16", "192.168.1.5", 4)}, nil, ErrConflictingEntries},
		{"one prefix upserted and deleted", []Entry{add}, prefixes("10.4.0.0/16"), ErrConflictingEntries},
		{"one prefix upserted and deleted, IPv4-mapped", []Entry{add}, prefixes("::ffff:10.4.0.0/112"), ErrConflictingEntries},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.Apply(tc.upserts, append(tc.deletes, netip.MustParsePrefix("10.2.0.0/16")))
			require.ErrorIs(t, err, tc.wantErr)
			got, err := d.Entries()
			require.NoError(t, err)
			require.Equal(t, sortEntries(good), sortEntries(got), "the map is untouched")
		})
	}

	// The same prefix twice with one value is one upsert.
	stats, err := d.Apply([]Entry{add, add, entry("10.4.0.1/16", "192.168.1.4", 4)}, nil)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Added: 1}, stats)

	require.NoError(t, d.Close())
	_, err = d.Apply(nil, prefixes("10.4.0.0/16"))
	require.ErrorIs(t, err, ErrClosed)
}

// TestApplyAcrossBatchesAndBehindItsBack applies more changes than one
// batch holds, with missing keys in the middle of delete batches, and checks
// that Sync repairs an entry deleted behind the Datapath's back.
func TestApplyAcrossBatchesAndBehindItsBack(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	all := genEntries(3 * batchSize)
	first, second := all[:2*batchSize], all[2*batchSize:]

	stats, err := d.Apply(first, nil)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Added: len(first)}, stats)

	// Delete every other entry of first plus every entry of second (never
	// added): the missing keys interleave with present ones in each batch.
	var del []netip.Prefix
	var rest []Entry
	for i, e := range first {
		if i%2 == 0 {
			del = append(del, e.Prefix)
		} else {
			rest = append(rest, e)
		}
		if i < len(second) {
			del = append(del, second[i].Prefix)
		}
	}
	stats, err = d.Apply(nil, del)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Deleted: len(first) / 2}, stats)
	got, err := d.Entries()
	require.NoError(t, err)
	require.Equal(t, sortEntries(rest), sortEntries(got))

	// An entry deleted behind the Datapath's back: Sync reads the map and
	// writes exactly that one again.
	gone := rest[0]
	require.NoError(t, d.objs.PodmeshIpcache.Delete(encodeKey(gone.Prefix)))
	stats, err = d.Sync(rest, false)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Added: 1}, stats, "Sync read the map and repaired the missing entry")
	got, err = d.Entries()
	require.NoError(t, err)
	require.Equal(t, sortEntries(rest), sortEntries(got))
}

// TestProgramLookupsFollowApply checks with BPF_PROG_RUN that the program
// sees each Apply at once: a more specific prefix takes over from a shorter
// one, its deletion hands the traffic back, and deleting the last prefix
// turns hits into misses. One table, both families.
func TestProgramLookupsFollowApply(t *testing.T) {
	testutils.RequireRoot(t)
	for _, tc := range []struct {
		family         string
		short, long    Entry
		inLong, inRest netip.Addr
	}{{
		family: "ipv4",
		short:  entry("10.2.0.0/16", "192.168.1.2", 2),
		long:   entry("10.2.3.0/24", "192.168.1.3", 3),
		inLong: netip.MustParseAddr("10.2.3.4"), inRest: netip.MustParseAddr("10.2.4.4"),
	}, {
		family: "ipv6",
		short:  entry("fd00:2::/48", "fd77::2", 2),
		long:   entry("fd00:2:0:3::/64", "fd77::3", 3),
		inLong: netip.MustParseAddr("fd00:2:0:3::4"), inRest: netip.MustParseAddr("fd00:2:0:4::4"),
	}} {
		t.Run(tc.family, func(t *testing.T) {
			d, _ := loadTest(t, 7)
			want := make(map[uint32]Counter)
			var wantDrops Drops
			// send runs one frame to dst and records where it must count:
			// the cluster ID of the entry that must match, or 0 for a miss.
			send := func(dst netip.Addr, cluster uint32) {
				t.Helper()
				in := frame(t, dst, 20)
				res := runProg(t, d, in)
				if cluster == 0 {
					require.Equal(t, uint32(tcActShot), res.verdict, "%s: a miss", dst)
					wantDrops.Miss.Packets++
					wantDrops.Miss.Bytes += uint64(len(in))
					return
				}
				require.Equal(t, uint32(tcActOK), res.verdict, "%s: a hit (drops %+v)", dst, drops(t, d))
				c := want[cluster]
				c.Packets++
				c.Bytes += uint64(len(in))
				want[cluster] = c
			}
			check := func(step string) {
				t.Helper()
				require.Equal(t, want, counters(t, d), step)
				require.Equal(t, wantDrops, drops(t, d), step)
			}

			_, err := d.Apply([]Entry{tc.short}, nil)
			require.NoError(t, err)
			send(tc.inLong, 2)
			send(tc.inRest, 2)
			check("only the short prefix")

			_, err = d.Apply([]Entry{tc.long}, nil)
			require.NoError(t, err)
			send(tc.inLong, 3)
			send(tc.inRest, 2)
			check("the longer prefix wins for its addresses")

			moved := tc.long
			moved.ClusterID = 4
			_, err = d.Apply([]Entry{moved}, nil)
			require.NoError(t, err)
			send(tc.inLong, 4)
			check("an update is seen at once")

			_, err = d.Apply(nil, []netip.Prefix{tc.long.Prefix})
			require.NoError(t, err)
			send(tc.inLong, 2)
			send(tc.inRest, 2)
			check("deleting the longer prefix hands its traffic back")

			_, err = d.Apply(nil, []netip.Prefix{tc.short.Prefix, tc.long.Prefix})
			require.NoError(t, err)
			send(tc.inLong, 0)
			send(tc.inRest, 0)
			check("no prefix left: misses")
		})
	}
}

// BenchmarkApplyChanges is BenchmarkSyncChanges done with Apply: on a
// 100,000-prefix ipcache, 1,000 changes (500 updated, 250 added, 250
// deleted) given as upserts and deletes.
func BenchmarkApplyChanges(b *testing.B) {
	testutils.RequireRoot(b)
	const n = 100_000
	all := genEntries(n + 250)
	base := all[:n]
	d, _ := loadTest(b, 1)
	_, err := d.Sync(base, true)
	require.NoError(b, err)

	// Forward: update 500 (flags), add 250 new, delete the first 250.
	// Back: restore those 500, re-add the 250, delete the 250 new ones.
	var fwdUp, backUp []Entry
	var fwdDel, backDel []netip.Prefix
	for i := 250; i < 750; i++ {
		e := base[i]
		backUp = append(backUp, e)
		e.Flags = 1
		fwdUp = append(fwdUp, e)
	}
	fwdUp = append(fwdUp, all[n:]...)
	backUp = append(backUp, base[:250]...)
	for _, e := range base[:250] {
		fwdDel = append(fwdDel, e.Prefix)
	}
	for _, e := range all[n:] {
		backDel = append(backDel, e.Prefix)
	}

	c0 := cpuTime(b)
	b.ResetTimer()
	for i := range b.N {
		up, del := fwdUp, fwdDel
		if i%2 == 1 {
			up, del = backUp, backDel
		}
		stats, err := d.Apply(up, del)
		require.NoError(b, err)
		require.Equal(b, SyncStats{Added: 750, Deleted: 250}, stats)
	}
	b.ReportMetric(float64((cpuTime(b)-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}
