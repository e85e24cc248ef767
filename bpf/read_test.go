package bpf

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/internal/testutils"
)

func imageOf(t *testing.T, es ...Entry) *Image {
	t.Helper()
	im, err := NewImage(es)
	require.NoError(t, err)
	return im
}

// nestedEntries are prefixes that contain each other, of both families:
// the trie dumps a prefix after every longer one it contains.
func nestedEntries() []Entry {
	return []Entry{
		entry("10.0.0.0/8", "192.168.1.2", 2),
		entry("10.2.0.0/16", "192.168.1.2", 2),
		entry("10.2.0.0/24", "192.168.1.4", 2),
		entry("10.2.5.77/32", "192.168.1.5", 2),
		entry("10.2.128.0/17", "192.168.1.6", 2),
		entry("10.3.0.0/16", "192.168.1.3", 3),
		entry("fd00:2::/64", "fd77::2", 2),
		entry("fd00:2::5/128", "fd77::5", 2),
		entry("fd00::/16", "fd77::6", 2),
	}
}

// A dump matches the image of the entries written (given in any order, in
// every form normalize accepts) and no longer matches once an entry is
// missing, added or changed behind the writer's back.
func TestDumpMatchesTheImageOfTheWrittenSetAndNothingElse(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	base := nestedEntries()
	_, err := d.Apply(base, nil)
	require.NoError(t, err)
	shuffled := append([]Entry(nil), base...)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	want := imageOf(t, shuffled...)
	normalised := append([]Entry(nil), base...)
	normalised[5] = entry("::ffff:10.3.0.0/112", "::ffff:192.168.1.3", 3)
	normalised[1] = entry("10.2.77.1/16", "192.168.1.2", 2)
	assert.Equal(t, want, imageOf(t, normalised...), "normalised forms make the same image")
	matches := func() bool {
		dump, err := d.Dump()
		require.NoError(t, err)
		return dump.Matches(want)
	}
	assert.True(t, matches(), "the dump is in the image's order")

	for _, step := range []struct {
		name    string
		upserts []Entry
		deletes []netip.Prefix
	}{
		{name: "a changed endpoint", upserts: []Entry{entry("10.2.0.0/16", "192.168.1.9", 2)}},
		{name: "a changed cluster ID", upserts: []Entry{entry("10.2.0.0/16", "192.168.1.2", 9)}},
		{name: "a changed prefix length", upserts: []Entry{entry("10.2.0.0/17", "192.168.1.2", 2)}, deletes: prefixes("10.2.0.0/16")},
		{name: "an entry added", upserts: []Entry{entry("10.4.0.0/16", "192.168.1.4", 4)}},
		{name: "an entry missing", deletes: prefixes("fd00:2::/64")},
	} {
		_, err := d.Sync(base, true)
		require.NoError(t, err)
		require.True(t, matches())
		_, err = d.Apply(step.upserts, step.deletes)
		require.NoError(t, err)
		assert.False(t, matches(), step.name)
	}
}

// randomEntries are n distinct random prefixes of every length, IPv4 and
// IPv6, many of them inside others.
func randomEntries(r *rand.Rand, n int) []Entry {
	seen := make(map[netip.Prefix]bool)
	var out []Entry
	for len(out) < n {
		var p netip.Prefix
		if r.IntN(3) == 0 {
			a := [16]byte{0xfd, 0, byte(r.IntN(4))}
			for i := 3; i < 16; i++ {
				a[i] = byte(r.IntN(256))
			}
			p = netip.PrefixFrom(netip.AddrFrom16(a), 16+r.IntN(113)).Masked()
		} else {
			a := [4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))}
			p = netip.PrefixFrom(netip.AddrFrom4(a), 8+r.IntN(25)).Masked()
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, Entry{Prefix: p, TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, 1, byte(1 + r.IntN(200))}), ClusterID: uint32(1 + r.IntN(MaxClusterID))})
	}
	return out
}

// The image's order is the kernel's dump order, for any mix of prefixes:
// otherwise a converged map would never match its image.
func TestImageOrderIsTheTriesDumpOrder(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	r := rand.New(rand.NewPCG(1, 2))
	es := randomEntries(r, max(5*batchSize/2, parallelSortMin+1)) // several batches, sorted in parallel
	_, err := d.Apply(es, nil)
	require.NoError(t, err)
	dump, err := d.Dump()
	require.NoError(t, err)
	require.Equal(t, len(es), dump.Len())
	im := imageOf(t, es...)
	if !assert.True(t, dump.Matches(im)) {
		for i := range dump.keys {
			if dump.keys[i] != im.keys[i] {
				t.Fatalf("entry %d: dump has %s, image %s", i, keyString(dump.keys[i]), keyString(im.keys[i]))
			}
		}
	}
}

// NewImage orders any permutation alike, keeps one of a repeated entry and
// refuses one prefix with two values.
func TestNewImageOrdersDeduplicatesAndRefusesConflicts(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	es := randomEntries(r, 2000)
	want := imageOf(t, es...)
	for i := range want.keys[1:] {
		require.Negative(t, compareKeys(want.keys[i], want.keys[i+1]), "strictly ordered at %d", i)
	}
	twice := append(append([]Entry(nil), es...), es[:100]...)
	r.Shuffle(len(twice), func(i, j int) { twice[i], twice[j] = twice[j], twice[i] })
	assert.Equal(t, want, imageOf(t, twice...))

	conflict := es[7]
	conflict.ClusterID = conflict.ClusterID%MaxClusterID + 1
	_, err := NewImage(append(twice, conflict))
	assert.ErrorIs(t, err, ErrConflictingEntries)
	_, err = NewImage([]Entry{{Prefix: es[0].Prefix, ClusterID: 2}})
	assert.ErrorIs(t, err, ErrInvalidEntry)
}
