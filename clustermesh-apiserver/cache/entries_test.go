package cache_test

import (
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
	require.ElementsMatch(t, []string{
		meshapi.CacheClusterConfigPrefix + "east",
		meshapi.CacheNodesPrefix + "east/n1",
		meshapi.CacheEndpointsPrefix + "east/ns/outside",
	}, keys)
	n, err := meshapi.DecodeNode(got[meshapi.CacheNodesPrefix+"east/n1"])
	require.NoError(t, err)
	require.Equal(t, n1, n)
	e, err := meshapi.DecodeEndpoint(got[meshapi.CacheEndpointsPrefix+"east/ns/outside"])
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("10.2.200.1")}, e.IPs)
	c, err := meshapi.DecodeClusterConfig(got[meshapi.CacheClusterConfigPrefix+"east"])
	require.NoError(t, err)
	require.Equal(t, cc.Name, c.Name)
}
