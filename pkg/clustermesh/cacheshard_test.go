package clustermesh

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// shardWorld is a remote's wire entries (wire key -> value) and the node
// each belongs to, as a cache shards them.
type shardWorld struct {
	wire  map[string]json.RawMessage
	owner map[string]string
}

func newShardWorld(t *testing.T, nodes int, moved, dropped map[int]bool) shardWorld {
	t.Helper()
	w := shardWorld{wire: map[string]json.RawMessage{}, owner: map[string]string{}}
	put := func(key, node string, v any) {
		b, err := meshapi.Encode(v)
		require.NoError(t, err)
		w.wire[key], w.owner[key] = b, node
	}
	for i := range nodes {
		name := fmt.Sprintf("node-%d", i)
		ip := netip.AddrFrom4([4]byte{192, 168, byte(i / 256), byte(i % 256)})
		if moved[i] {
			ip = netip.AddrFrom4([4]byte{192, 169, byte(i / 256), byte(i % 256)})
		}
		put(meshapi.NodeKey("east", name), name, meshapi.Node{Cluster: "east", ClusterID: 2, Name: name, InternalIPs: []netip.Addr{ip},
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, byte(i % 200), 0}), 24)}})
		if dropped[i] {
			continue
		}
		pod := fmt.Sprintf("pod-%d", i)
		put(meshapi.EndpointKey("east", "ns", pod), name, meshapi.Endpoint{Cluster: "east", ClusterID: 2, Namespace: "ns", Name: pod, Node: name,
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 2, 200 + byte(i/256), byte(i % 256)})}})
	}
	// An entry every reader must refuse: a pod IP outside the cluster.
	put(meshapi.EndpointKey("east", "ns", "stray"), "node-0", meshapi.Endpoint{Cluster: "east", ClusterID: 2, Namespace: "ns", Name: "stray", Node: "node-0",
		IPs: []netip.Addr{netip.MustParseAddr("10.9.0.1")}})
	return w
}

// shards encodes the world in count shards, as the cache does.
func (w shardWorld) shards(t *testing.T, count int) map[string][]byte {
	t.Helper()
	grouped := make([]map[string]json.RawMessage, count)
	for i := range grouped {
		grouped[i] = map[string]json.RawMessage{}
	}
	for k, v := range w.wire {
		grouped[meshapi.ShardOf(w.owner[k], count)][k] = v
	}
	out := map[string][]byte{}
	for i, entries := range grouped {
		b, err := meshapi.EncodeCacheShard(entries)
		require.NoError(t, err)
		out[meshapi.CacheShardKey("east", i, count)] = b
	}
	return out
}

// direct is what direct mode computes from the same wire entries, each
// read from the remote itself.
func (w shardWorld) direct(cc *meshapi.ClusterConfig) (*clusterState, ComputeStats, []datapath.Entry) {
	s := newClusterState(cc)
	for k, v := range w.wire {
		_ = s.apply("", kvstore.Event{Kind: kvstore.Upsert, Key: k, Value: v})
	}
	entries, st := ComputeEntries("east", 2, netip.MustParseAddr("172.31.0.1"), s.nodes, s.endpoints)
	return s, st, entries
}

// viewOfEast is an agent's cache view that read the config of cluster east.
func viewOfEast(t *testing.T) (*cacheView, *meshapi.ClusterConfig) {
	t.Helper()
	cc := &meshapi.ClusterConfig{Name: "east", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, FormatVersion: meshapi.FormatVersion}
	rawCfg, err := meshapi.Encode(cc)
	require.NoError(t, err)
	v := newCacheView()
	require.NoError(t, v.apply(kvstore.Event{Kind: kvstore.Upsert, Key: meshapi.CacheClusterConfigPrefix + "east", Value: rawCfg}))
	return v, cc
}

// TestAgentFedCompressedShardsHoldsWhatDirectModeReads: an agent's cache
// view fed compressed shards (format 2) validates every entry and computes
// exactly the entries direct mode computes from the same wire entries, and
// still does after the shards are rewritten with changes and split anew.
func TestAgentFedCompressedShardsHoldsWhatDirectModeReads(t *testing.T) {
	v, cc := viewOfEast(t)

	check := func(w shardWorld) {
		t.Helper()
		cl := v.clusters["east"]
		require.NotNil(t, cl)
		require.Empty(t, cl.invalidTotal[ReasonUnsupported], "every shard read")
		require.Empty(t, cl.invalidTotal[ReasonMalformed], "every shard read")
		want, wantStats, wantEntries := w.direct(cc)
		require.Len(t, cl.state.nodes, len(want.nodes))
		require.Len(t, cl.state.endpoints, len(want.endpoints))
		entries, st := ComputeEntries("east", 2, netip.MustParseAddr("172.31.0.1"), cl.state.nodes, cl.state.endpoints)
		require.ElementsMatch(t, wantEntries, entries)
		require.NotEmpty(t, entries)
		require.Equal(t, wantStats, st)
		require.Len(t, want.invalid, 1, "the stray pod")
		require.Equal(t, len(want.invalid), len(cl.state.invalid), "the same entries refused")
		for k := range want.invalid {
			require.Contains(t, cl.state.invalid, k)
		}
	}

	first := newShardWorld(t, 600, nil, nil)
	old := first.shards(t, 4)
	for k, b := range old {
		require.NoError(t, v.apply(kvstore.Event{Kind: kvstore.Upsert, Key: k, Value: b}))
	}
	check(first)
	require.Len(t, v.clusters["east"].state.nodes, 600)
	require.Len(t, v.clusters["east"].state.endpoints, 600)

	// Changed nodes, pods gone, and the cluster split into 8 shards: the
	// new shards arrive, then the old ones are deleted.
	moved, dropped := map[int]bool{}, map[int]bool{}
	for i := range 600 {
		moved[i] = i%7 == 0
		dropped[i] = i%5 == 0
	}
	second := newShardWorld(t, 600, moved, dropped)
	for k, b := range second.shards(t, 8) {
		require.NoError(t, v.apply(kvstore.Event{Kind: kvstore.Upsert, Key: k, Value: b}))
	}
	for k := range old {
		require.NoError(t, v.apply(kvstore.Event{Kind: kvstore.Delete, Key: k}))
	}
	check(second)
	require.Len(t, v.clusters["east"].state.endpoints, 480)
}

// TestAgentRefusesAShardOfAnotherCacheFormat: a shard the agent cannot read
// (uncompressed JSON of format 1) gives it no entries and is reported with
// the formats involved, not misread.
func TestAgentRefusesAShardOfAnotherCacheFormat(t *testing.T) {
	v, _ := viewOfEast(t)
	w := newShardWorld(t, 10, nil, nil)
	plain, err := meshapi.Encode(meshapi.CacheShard{Entries: w.wire, Format: 1})
	require.NoError(t, err)
	require.NoError(t, v.apply(kvstore.Event{Kind: kvstore.Upsert, Key: meshapi.CacheShardKey("east", 0, 1), Value: plain}))
	cl := v.clusters["east"]
	require.Empty(t, cl.state.nodes)
	require.Empty(t, cl.state.endpoints)
	require.Equal(t, uint64(1), cl.invalidTotal[ReasonUnsupported])
	require.Contains(t, cl.lastInvalid, "cache format 1")
}
