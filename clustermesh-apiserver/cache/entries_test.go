package cache_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/clustermesh-apiserver/cache"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestEntriesCarryNodesAndOnlyPodIPsOutsideTheirNodesCIDRs: the cache's
// reduction of a remote keeps the config and every node, and of the pods
// only the IPs outside their node's pod CIDRs; a pod of an unknown node is
// left out.
func TestEntriesCarryNodesAndOnlyPodIPsOutsideTheirNodesCIDRs(t *testing.T) {
	cc := &meshapi.ClusterConfig{Name: "east", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, FormatVersion: 1}
	n1 := &meshapi.Node{Cluster: "east", ClusterID: 2, Name: "n1", InternalIPs: []netip.Addr{netip.MustParseAddr("192.168.1.1")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24")}}
	ep := func(name, node string, ips ...string) *meshapi.Endpoint {
		e := &meshapi.Endpoint{Cluster: "east", ClusterID: 2, Namespace: "ns", Name: name, Node: node}
		for _, ip := range ips {
			e.IPs = append(e.IPs, netip.MustParseAddr(ip))
		}
		return e
	}
	endpoints := map[string]*meshapi.Endpoint{}
	for _, e := range []*meshapi.Endpoint{
		ep("inside", "n1", "10.2.1.5"),
		ep("outside", "n1", "10.2.200.1"),
		ep("orphan", "n9", "10.2.200.2"),
	} {
		endpoints[meshapi.EndpointKey("east", e.Namespace, e.Name)] = e
	}
	got, err := cache.Entries(cc, map[string]*meshapi.Node{"n1": n1}, endpoints)
	require.NoError(t, err)
	keys := make([]string, 0, len(got))
	for k := range got {
		keys = append(keys, k)
	}
	require.ElementsMatch(t, []string{meshapi.CacheClusterConfigPrefix + "east", meshapi.CacheShardKey("east", 0, 1)}, keys)
	shard, err := meshapi.DecodeCacheShard(got[meshapi.CacheShardKey("east", 0, 1)])
	require.NoError(t, err)
	wire := make([]string, 0, len(shard.Entries))
	for k := range shard.Entries {
		wire = append(wire, k)
	}
	require.ElementsMatch(t, []string{meshapi.NodeKey("east", "n1"), meshapi.EndpointKey("east", "ns", "outside")}, wire)
	n, err := meshapi.DecodeNode(shard.Entries[meshapi.NodeKey("east", "n1")])
	require.NoError(t, err)
	require.Equal(t, n1, n)
	e, err := meshapi.DecodeEndpoint(shard.Entries[meshapi.EndpointKey("east", "ns", "outside")])
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("10.2.200.1")}, e.IPs)
	c, err := meshapi.DecodeClusterConfig(got[meshapi.CacheClusterConfigPrefix+"east"])
	require.NoError(t, err)
	require.Equal(t, cc.Name, c.Name)
}

// TestEntriesShardLargeClustersWithEachPodBesideItsNode: a cluster of many
// nodes is split into ShardCount shards; every node is in exactly one, and a
// pod cached for its IP outside the node's CIDR is in its node's shard.
func TestEntriesShardLargeClustersWithEachPodBesideItsNode(t *testing.T) {
	cc := &meshapi.ClusterConfig{Name: "east", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, FormatVersion: 1}
	nodes := map[string]*meshapi.Node{}
	endpoints := map[string]*meshapi.Endpoint{}
	for i := range 1000 {
		name := fmt.Sprintf("n%d", i)
		nodes[name] = &meshapi.Node{Cluster: "east", ClusterID: 2, Name: name, InternalIPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(i / 256), byte(i % 256)})},
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 256), byte(i % 256), 0}), 24)}}
		endpoints[meshapi.EndpointKey("east", "ns", "p"+name)] = &meshapi.Endpoint{Cluster: "east", ClusterID: 2, Namespace: "ns", Name: "p" + name, Node: name,
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 200, byte(i / 256), byte(i % 256)})}}
	}
	got, err := cache.Entries(cc, nodes, endpoints)
	require.NoError(t, err)
	count := meshapi.ShardCount(1000)
	require.Len(t, got, 1+count)
	seen := map[string]int{}
	for i := range count {
		shard, err := meshapi.DecodeCacheShard(got[meshapi.CacheShardKey("east", i, count)])
		require.NoError(t, err)
		for k, raw := range shard.Entries {
			seen[k]++
			if e, err := meshapi.DecodeEndpoint(raw); err == nil && e.Node != "" {
				require.Equal(t, i, meshapi.ShardOf(e.Node, count), "pod %s beside its node", k)
			}
		}
	}
	require.Len(t, seen, 2000)
	for k, n := range seen {
		require.Equal(t, 1, n, k)
	}
}
