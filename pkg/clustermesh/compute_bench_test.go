package clustermesh

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// BenchmarkComputeEntries measures one recomputation of a cluster with 100
// nodes and 1,000 (or 10,000) endpoints, 10% of them outside their node's
// CIDR: the work the agent does per batch of remote events.
func BenchmarkComputeEntries(b *testing.B) {
	for _, eps := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("nodes=100/endpoints=%d", eps), func(b *testing.B) {
			nodes := make(map[string]*meshapi.Node, 100)
			for k := range 100 {
				name := fmt.Sprintf("n%d", k)
				nodes[name] = &meshapi.Node{Name: name, InternalIPs: []netip.Addr{netip.AddrFrom4([4]byte{172, 16, 0, byte(k + 1)})},
					PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, byte(k), 0}), 24)}}
			}
			endpoints := make(map[string]*meshapi.Endpoint, eps)
			for i := range eps {
				k := i % 100
				ip := netip.AddrFrom4([4]byte{10, 2, byte(k), byte(2 + i/100%250)})
				if i%10 == 9 {
					ip = netip.AddrFrom4([4]byte{10, 2, byte(200 + i/256%50), byte(i % 256)})
				}
				endpoints[fmt.Sprintf("e%d", i)] = &meshapi.Endpoint{Node: fmt.Sprintf("n%d", k), IPs: []netip.Addr{ip}}
			}
			local := netip.MustParseAddr("172.31.0.1")
			b.ReportAllocs()
			for b.Loop() {
				ComputeEntries("east", 2, local, nodes, endpoints)
			}
		})
	}
}
