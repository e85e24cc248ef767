package cache

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestEncoderMatchesAFreshEncodingAndRecompressesOnlyChangedShards: through
// random churn (nodes replaced, added and deleted across shard-count
// changes, endpoints moving in and out of their node's CIDR or deleted),
// the incremental encoder's output is byte for byte what encoding the
// whole state afresh gives, and a change of one node re-encodes only its
// shard.
func TestEncoderMatchesAFreshEncodingAndRecompressesOnlyChangedShards(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 12))
	cc := &meshapi.ClusterConfig{Name: "east", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, FormatVersion: 1}
	node := func(i, gen int) *meshapi.Node {
		return &meshapi.Node{Cluster: "east", ClusterID: 2, Name: fmt.Sprintf("n%d", i),
			InternalIPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)})},
			PodCIDRs:    []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(gen % 2), byte(i >> 8), byte(i)}), 32)}}
	}
	endpoint := func(i int) *meshapi.Endpoint {
		n := rng.IntN(700)
		return &meshapi.Endpoint{Cluster: "east", ClusterID: 2, Namespace: "ns", Name: fmt.Sprintf("p%d", i), Node: fmt.Sprintf("n%d", n),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(rng.IntN(2)), byte(n >> 8), byte(n)})}}
	}
	nodes := map[string]*meshapi.Node{}
	for i := range 500 {
		nodes[fmt.Sprintf("n%d", i)] = node(i, 0)
	}
	endpoints := map[string]*meshapi.Endpoint{}
	for i := range 2000 {
		endpoints[meshapi.EndpointKey("east", "ns", fmt.Sprintf("p%d", i))] = endpoint(i)
	}
	var enc encoder
	prev, err := enc.entries(cc, nodes, endpoints)
	require.NoError(t, err)
	for step := range 400 {
		oneNode := false
		switch k := rng.IntN(10); {
		case k < 4: // one node replaced by a changed copy
			i := rng.IntN(700)
			if _, ok := nodes[fmt.Sprintf("n%d", i)]; ok {
				nodes[fmt.Sprintf("n%d", i)] = node(i, step+1)
				oneNode = true
			}
		case k < 6: // a node added or deleted (the count crosses 512 now and then)
			i := rng.IntN(700)
			if _, ok := nodes[fmt.Sprintf("n%d", i)]; ok {
				delete(nodes, fmt.Sprintf("n%d", i))
			} else {
				nodes[fmt.Sprintf("n%d", i)] = node(i, step)
			}
		case k < 9: // an endpoint replaced (its IP in or out of its node's CIDR)
			i := rng.IntN(2000)
			endpoints[meshapi.EndpointKey("east", "ns", fmt.Sprintf("p%d", i))] = endpoint(i)
		default:
			delete(endpoints, meshapi.EndpointKey("east", "ns", fmt.Sprintf("p%d", rng.IntN(2000))))
		}
		got, err := enc.entries(cc, nodes, endpoints)
		require.NoError(t, err)
		fresh, err := Entries(cc, nodes, endpoints)
		require.NoError(t, err)
		require.Equal(t, fresh, got, "step %d", step)
		if oneNode && len(got) == len(prev) {
			reencoded := 0
			for k, v := range got {
				if p, ok := prev[k]; !ok || &p[0] != &v[0] {
					reencoded++
				}
			}
			require.Equal(t, 1, reencoded, "step %d: one node changed, one shard re-encoded", step)
		}
		prev = got
	}
}
