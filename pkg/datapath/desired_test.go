package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDesiredChangesReturnsTheObjectsWhoseRevisionMoved(t *testing.T) {
	d := NewDesired()
	before := time.Now()
	d.SetCluster("b", nil, []Entry{entry("10.2.0.0/24", "192.168.0.3"), entry("10.2.1.0/24", "192.168.0.4")})
	v1 := d.Version()
	d.Upsert(entry("10.2.2.0/24", "192.168.0.5"))
	d.Delete("b", mustPrefix("10.2.0.0/24"))
	d.Upsert(entry("10.2.1.0/24", "192.168.0.9"))
	d.Delete("b", mustPrefix("10.2.9.0/24")) // missing: no revision, no change
	// Another cluster holding the same prefix: the name that sorts first wins.
	c := entry("10.2.2.0/24", "192.168.0.7")
	c.Cluster = "a"
	d.Upsert(c)

	ch, ok := d.Changes(v1)
	require.True(t, ok)
	assert.Equal(t, d.Version(), ch.Revision)
	assert.False(t, ch.PruneAllowed)
	assert.False(t, ch.Oldest.Before(before), "Oldest is when the oldest returned object changed")
	got := map[netip.Prefix]Object{}
	last := v1
	for _, o := range ch.Objects {
		_, dup := got[o.Entry.Prefix]
		assert.False(t, dup, "each prefix once")
		assert.Greater(t, o.Revision, last, "in revision order")
		last = o.Revision
		got[o.Entry.Prefix] = o
	}
	assert.Len(t, got, 3)
	assert.True(t, got[mustPrefix("10.2.0.0/24")].Deleted, "a withdrawn prefix is a tombstone")
	assert.Equal(t, mustAddr("192.168.0.9"), got[mustPrefix("10.2.1.0/24")].Entry.TunnelEndpoint)
	assert.Equal(t, "a", got[mustPrefix("10.2.2.0/24")].Entry.Cluster)
	snap := d.Snapshot()
	for p, o := range got {
		e, present := snap.Entries[p]
		assert.Equal(t, present, !o.Deleted, "%s agrees with Snapshot", p)
		if present {
			assert.Equal(t, e, o.Entry, "%s agrees with Snapshot", p)
		}
	}

	ch, ok = d.Changes(d.Version())
	require.True(t, ok)
	assert.Empty(t, ch.Objects)

	v := d.Version()
	d.AllowPrune()
	ch, ok = d.Changes(v)
	require.True(t, ok)
	assert.Empty(t, ch.Objects)
	assert.True(t, ch.PruneAllowed)
	assert.Greater(t, ch.Revision, v, "a prune permission change moves the revision")

	d.SetCluster("b", []netip.Prefix{mustPrefix("10.2.0.0/16")}, []Entry{entry("10.2.1.0/24", "192.168.0.9")})
	ch, ok = d.Changes(ch.Revision)
	require.True(t, ok)
	assert.Empty(t, ch.Objects, "only the pod CIDRs changed")
	assert.Equal(t, map[string][]netip.Prefix{"b": {mustPrefix("10.2.0.0/16")}}, ch.PodCIDRs)

	d.RemoveCluster("b")
	ch, ok = d.Changes(ch.Revision)
	require.True(t, ok)
	assert.Len(t, ch.Objects, 1, "the one prefix cluster b still held, as a tombstone")
	assert.True(t, ch.Objects[0].Deleted)
	assert.Empty(t, ch.PodCIDRs)
}

func TestDesiredChangesFallsBackWhenTombstonesWereForgotten(t *testing.T) {
	d := NewDesired()
	d.Upsert(entry("10.2.0.0/24", "192.168.0.3"))
	v := d.Version()
	big := make([]Entry, tombstonesKept+1)
	for i := range big {
		a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
		big[i] = Entry{Prefix: netip.PrefixFrom(a, 32), TunnelEndpoint: mustAddr("192.168.0.3"), ClusterID: 2, Cluster: "c"}
	}
	d.SetCluster("c", nil, big)
	ch, ok := d.Changes(v)
	require.True(t, ok, "live objects are never forgotten")
	assert.Len(t, ch.Objects, tombstonesKept+1)
	d.RemoveCluster("c")
	_, ok = d.Changes(v)
	assert.False(t, ok, "withdrawals since v were forgotten: the caller must take a snapshot")
	v2 := d.Version()
	d.Upsert(entry("10.2.1.0/24", "192.168.0.4"))
	ch, ok = d.Changes(v2)
	require.True(t, ok, "later revisions are answered again")
	assert.Len(t, ch.Objects, 1)
	assert.Len(t, d.Snapshot().Entries, 2)
}

// A large first set fills the empty table in the order given; a prefix
// given twice is one object with its last entry, as in the general case.
func TestDesiredFirstLargeSetKeepsItsOrderAndItsLastDuplicate(t *testing.T) {
	for _, dup := range []bool{false, true} {
		d := NewDesired()
		es := benchSlice(3 * fillMin)
		if dup {
			again := es[5]
			again.TunnelEndpoint = mustAddr("192.168.9.9")
			es = append(es, again)
		}
		cidrs := []netip.Prefix{mustPrefix("100.64.0.0/10")}
		d.SetCluster("b", cidrs, es)
		ch, ok := d.Changes(0)
		require.True(t, ok)
		require.Len(t, ch.Objects, 3*fillMin)
		if !dup {
			for i, o := range ch.Objects {
				require.Equal(t, es[i], o.Entry, "object %d in the order given", i)
			}
		}
		snap := d.Snapshot()
		require.Len(t, snap.Entries, 3*fillMin)
		want := map[netip.Prefix]Entry{}
		for _, e := range es {
			want[e.Prefix] = e
		}
		assert.Equal(t, want, snap.Entries)
		for _, o := range ch.Objects {
			assert.Equal(t, want[o.Entry.Prefix], o.Entry)
		}
		assert.Equal(t, map[string][]netip.Prefix{"b": cidrs}, ch.PodCIDRs)
		v := d.Version()
		d.SetCluster("b", cidrs, es)
		assert.Equal(t, v, d.Version(), "the same set again changes nothing")
	}
}
