package meshapi_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

func TestOutsideNodeCIDRsKeepsOnlyPodIPsOutsideTheNodesCIDRs(t *testing.T) {
	node := &meshapi.Node{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24"), netip.MustParsePrefix("fd00:2:1::/64")}}
	ep := func(ips ...string) *meshapi.Endpoint {
		e := &meshapi.Endpoint{Cluster: "east", ClusterID: 2, Namespace: "ns", Name: "p", Node: "n1"}
		for _, ip := range ips {
			e.IPs = append(e.IPs, netip.MustParseAddr(ip))
		}
		return e
	}
	for _, tc := range []struct {
		name string
		e    *meshapi.Endpoint
		node *meshapi.Node
		want []string // nil: the endpoint is left out
	}{
		{"inside, v4", ep("10.2.1.7"), node, nil},
		{"inside, dual stack", ep("10.2.1.7", "fd00:2:1::7"), node, nil},
		{"outside, v4", ep("10.2.200.9"), node, []string{"10.2.200.9"}},
		{"outside, v6", ep("fd00:2:9::1"), node, []string{"fd00:2:9::1"}},
		{"one of two outside", ep("10.2.1.7", "fd00:2:9::1"), node, []string{"fd00:2:9::1"}},
		{"node unknown", ep("10.2.200.9"), nil, nil},
		{"node without CIDRs", ep("10.2.1.7"), &meshapi.Node{}, []string{"10.2.1.7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := append([]netip.Addr(nil), tc.e.IPs...)
			got := meshapi.OutsideNodeCIDRs(tc.e, tc.node)
			require.Equal(t, before, tc.e.IPs, "the input is not modified")
			if tc.want == nil {
				require.Nil(t, got)
				return
			}
			require.NotNil(t, got)
			var ips []string
			for _, ip := range got.IPs {
				ips = append(ips, ip.String())
			}
			require.Equal(t, tc.want, ips)
			require.Equal(t, tc.e.Name, got.Name, "the rest of the endpoint is kept")
		})
	}
}

func TestCacheKeysStayOutsideThePeersRange(t *testing.T) {
	for _, k := range []string{meshapi.CacheRoot, meshapi.CacheShardKey("east", 0, 1), meshapi.CacheStatusKey("east"), meshapi.CacheEpochKey} {
		require.True(t, strings.HasPrefix(k, meshapi.CacheRoot), k)
		// The peers' etcd role covers ["podmesh/", "podmesh0").
		require.True(t, k < "podmesh/" || k >= "podmesh0", "%s is in the peers' range", k)
	}
}

func TestShardsSpreadNodesAndHoldAboutNodesPerShard(t *testing.T) {
	require.Equal(t, 1, meshapi.ShardCount(0))
	require.Equal(t, 1, meshapi.ShardCount(meshapi.NodesPerShard))
	require.Equal(t, 2, meshapi.ShardCount(meshapi.NodesPerShard+1))
	require.Equal(t, 32, meshapi.ShardCount(5000))
	counts := make([]int, 32)
	for i := range 5000 {
		s := meshapi.ShardOf("node-"+strconv.Itoa(i), 32)
		require.True(t, s >= 0 && s < 32)
		counts[s]++
	}
	for i, c := range counts {
		require.Greater(t, c, 100, "shard %d holds %d of 5000 nodes", i, c)
		require.Less(t, c, 220, "shard %d holds %d of 5000 nodes", i, c)
	}
	require.Equal(t, meshapi.ShardOf("n1", 8), meshapi.ShardOf("n1", 8), "stable")
}

// compressShard builds a shard value by hand: the format byte, then a zstd
// frame of body, with its content size in the frame header or (streamed)
// without.
func compressShard(t *testing.T, format byte, body []byte, withSize bool) []byte {
	t.Helper()
	out := bytes.NewBuffer([]byte{format})
	if withSize {
		e, err := zstd.NewWriter(nil)
		require.NoError(t, err)
		return e.EncodeAll(body, out.Bytes())
	}
	w, err := zstd.NewWriter(out, zstd.WithWindowSize(128<<10)) // a window the reader accepts
	require.NoError(t, err)
	_, err = w.Write(body)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return out.Bytes()
}

func TestCacheShardRoundTripsAndIsSmallerThanItsJSON(t *testing.T) {
	entries := map[string]json.RawMessage{}
	for i := range 300 {
		n := meshapi.Node{Cluster: "east", ClusterID: 2, Name: "node-" + strconv.Itoa(i),
			InternalIPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(i / 256), byte(i % 256)})},
			PodCIDRs:    []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, byte(i), 0}), 24)}}
		b, err := meshapi.Encode(n)
		require.NoError(t, err)
		entries[meshapi.NodeKey("east", n.Name)] = b
	}
	value, err := meshapi.EncodeCacheShard(entries)
	require.NoError(t, err)
	require.Equal(t, byte(meshapi.CacheFormat), value[0], "the value starts with its format")
	plain, err := meshapi.Encode(meshapi.CacheShard{Entries: entries, Format: meshapi.CacheFormat})
	require.NoError(t, err)
	require.Less(t, len(value)*4, len(plain), "compressed: %d bytes, JSON %d", len(value), len(plain))

	s, err := meshapi.DecodeCacheShard(value)
	require.NoError(t, err)
	require.Equal(t, meshapi.CacheFormat, s.Format)
	require.Len(t, s.Entries, len(entries))
	for k, v := range entries {
		require.JSONEq(t, string(v), string(s.Entries[k]), k)
	}
	again, err := meshapi.EncodeCacheShard(s.Entries)
	require.NoError(t, err)
	require.Equal(t, value, again, "the same entries encode to the same bytes (the cache skips unchanged writes)")
}

func TestDecodeCacheShardRefusesFormatsItDoesNotKnow(t *testing.T) {
	for name, value := range map[string][]byte{
		"format 1, uncompressed JSON":        []byte(`{"entries":{"podmesh/v1/nodes/east/n1":{"name":"n1"}},"format":1}`),
		"a later format":                     compressShard(t, meshapi.CacheFormat+1, []byte(`{"entries":{},"format":3}`), true),
		"a format-2 value whose JSON says 1": compressShard(t, meshapi.CacheFormat, []byte(`{"entries":{},"format":1}`), true),
		"a format-2 value without a format":  compressShard(t, meshapi.CacheFormat, []byte(`{"entries":{}}`), true),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := meshapi.DecodeCacheShard(value)
			require.ErrorIs(t, err, meshapi.ErrUnsupported)
			require.Contains(t, err.Error(), "cache format")
		})
	}
	_, err := meshapi.DecodeCacheShard([]byte{meshapi.CacheFormat, 1, 2, 3})
	require.ErrorContains(t, err, "decompress", "not a zstd frame")
	_, err = meshapi.DecodeCacheShard(nil)
	require.Error(t, err)
}

// TestDecodeCacheShardBoundsStoredAndDecompressedSize: a value over the
// bound is refused as stored, and a small value that would decompress
// beyond it is refused too, whether or not its frame declares its size.
func TestDecodeCacheShardBoundsStoredAndDecompressedSize(t *testing.T) {
	_, err := meshapi.DecodeCacheShard(make([]byte, meshapi.MaxCacheShardSize+1))
	require.ErrorIs(t, err, meshapi.ErrTooLarge)

	pad := func(n int) []byte {
		return []byte(`{"entries":{},"format":2,"pad":"` + strings.Repeat("a", n) + `"}`)
	}
	fits := compressShard(t, meshapi.CacheFormat, pad(meshapi.MaxCacheShardSize-100), true)
	_, err = meshapi.DecodeCacheShard(fits)
	require.NoError(t, err, "just under the bound")
	for _, size := range []int{meshapi.MaxCacheShardSize, 64 * meshapi.MaxCacheShardSize} {
		for _, withSize := range []bool{true, false} {
			bomb := compressShard(t, meshapi.CacheFormat, pad(size), withSize)
			require.Less(t, len(bomb), 64<<10, "a small value")
			_, err := meshapi.DecodeCacheShard(bomb)
			require.ErrorIs(t, err, meshapi.ErrTooLarge, "%d bytes, size declared: %v", size, withSize)
			if !withSize {
				// Nothing declared up front: the decoder stops at the bound.
				require.ErrorIs(t, err, zstd.ErrDecoderSizeExceeded)
			}
		}
	}

	wide := bytes.NewBuffer([]byte{meshapi.CacheFormat})
	w, err := zstd.NewWriter(wide, zstd.WithWindowSize(64<<20))
	require.NoError(t, err)
	_, err = w.Write(pad(4 * meshapi.MaxCacheShardSize))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	_, err = meshapi.DecodeCacheShard(wide.Bytes())
	require.ErrorIs(t, err, meshapi.ErrTooLarge, "a frame asking for a window beyond the bound")

	many := map[string]json.RawMessage{}
	for i := range meshapi.MaxCacheShardEntries + 1 {
		many[strconv.Itoa(i)] = json.RawMessage(`0`)
	}
	_, err = meshapi.EncodeCacheShard(many)
	require.ErrorIs(t, err, meshapi.ErrTooLarge, "too many entries")
	_, err = meshapi.DecodeCacheShard(compressShard(t, meshapi.CacheFormat, mustJSON(t, meshapi.CacheShard{Entries: many, Format: meshapi.CacheFormat}), true))
	require.ErrorIs(t, err, meshapi.ErrTooLarge, "too many entries")
	_, err = meshapi.EncodeCacheShard(map[string]json.RawMessage{"k": json.RawMessage(`"` + strings.Repeat("a", meshapi.MaxCacheShardSize) + `"`)})
	require.ErrorIs(t, err, meshapi.ErrTooLarge, "the writer refuses what readers would refuse")
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

func TestDecodeCacheStatusRequiresItsFieldsAndFormat(t *testing.T) {
	s, err := meshapi.DecodeCacheStatus([]byte(`{"cluster":"east","clusterID":2,"synced":true,"ready":false,"reason":"x","since":"2026-01-01T00:00:00Z","format":2}`))
	require.NoError(t, err)
	require.Equal(t, "east", s.Cluster)
	_, err = meshapi.DecodeCacheStatus([]byte(`{"cluster":"east","clusterID":2,"synced":true,"ready":true,"format":3}`))
	require.ErrorIs(t, err, meshapi.ErrUnsupported)
	_, err = meshapi.DecodeCacheStatus([]byte(`{"cluster":"east","clusterID":2,"ready":true,"format":2}`))
	require.ErrorIs(t, err, meshapi.ErrMissingField)
}
