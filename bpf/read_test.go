package bpf

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/internal/testutils"
)

func digestOf(t *testing.T, es ...Entry) Digest {
	t.Helper()
	var g Digest
	for _, e := range es {
		require.NoError(t, g.Add(e))
	}
	return g
}

// A dump's digest equals the digest of the entries written (in any order,
// in the forms normalize accepts), and moves with every entry missing,
// added or changed behind the writer's back.
func TestDumpDigestEqualsTheWrittenSetAndMovesWithAnyDifference(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 1)
	base := sampleEntries()
	_, err := d.Apply(base, nil)
	require.NoError(t, err)
	want := digestOf(t, base[2], base[0], base[1])
	assert.Equal(t, want, digestOf(t, entry("::ffff:10.3.0.0/112", "::ffff:192.168.1.3", 3), entry("10.2.77.1/16", "192.168.1.2", 2), base[1]),
		"normalised forms digest alike")
	dumpDigest := func() Digest {
		dump, err := d.Dump()
		require.NoError(t, err)
		assert.Equal(t, dump.Len(), dump.Digest().Len())
		return dump.Digest()
	}
	assert.Equal(t, want, dumpDigest())

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
		require.Equal(t, want, dumpDigest())
		_, err = d.Apply(step.upserts, step.deletes)
		require.NoError(t, err)
		assert.NotEqual(t, want, dumpDigest(), step.name)
	}
}
