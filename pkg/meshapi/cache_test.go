package meshapi_test

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

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

func TestDecodeCacheShardBoundsAndFormat(t *testing.T) {
	s, err := meshapi.DecodeCacheShard([]byte(`{"entries":{"podmesh/v1/nodes/east/n1":{"name":"n1"}},"format":1}`))
	require.NoError(t, err)
	require.Len(t, s.Entries, 1)
	_, err = meshapi.DecodeCacheShard([]byte(`{"entries":{},"format":2}`))
	require.ErrorIs(t, err, meshapi.ErrUnsupported)
	_, err = meshapi.DecodeCacheShard(make([]byte, meshapi.MaxCacheShardSize+1))
	require.ErrorIs(t, err, meshapi.ErrTooLarge)
}

func TestDecodeCacheStatusRequiresItsFieldsAndFormat(t *testing.T) {
	s, err := meshapi.DecodeCacheStatus([]byte(`{"cluster":"east","clusterID":2,"synced":true,"ready":false,"reason":"x","since":"2026-01-01T00:00:00Z","format":1}`))
	require.NoError(t, err)
	require.Equal(t, "east", s.Cluster)
	_, err = meshapi.DecodeCacheStatus([]byte(`{"cluster":"east","clusterID":2,"synced":true,"ready":true,"format":2}`))
	require.ErrorIs(t, err, meshapi.ErrUnsupported)
	_, err = meshapi.DecodeCacheStatus([]byte(`{"cluster":"east","clusterID":2,"ready":true,"format":1}`))
	require.ErrorIs(t, err, meshapi.ErrMissingField)
}
