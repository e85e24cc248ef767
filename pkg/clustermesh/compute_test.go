package clustermesh

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

func node(name string, ips []string, cidrs ...string) *meshapi.Node {
	n := &meshapi.Node{Cluster: "east", ClusterID: 2, Name: name}
	for _, ip := range ips {
		n.InternalIPs = append(n.InternalIPs, netip.MustParseAddr(ip))
	}
	for _, c := range cidrs {
		n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix(c))
	}
	return n
}

func endpoint(nodeName string, ips ...string) *meshapi.Endpoint {
	e := &meshapi.Endpoint{Cluster: "east", ClusterID: 2, Namespace: "default", Name: "p", Node: nodeName}
	for _, ip := range ips {
		e.IPs = append(e.IPs, netip.MustParseAddr(ip))
	}
	return e
}

func entry(prefix, via string) datapath.Entry {
	return datapath.Entry{Prefix: netip.MustParsePrefix(prefix), TunnelEndpoint: netip.MustParseAddr(via), ClusterID: 2, Cluster: "east"}
}

func TestComputeEntries(t *testing.T) {
	v4 := netip.MustParseAddr("192.168.0.1")
	v6 := netip.MustParseAddr("fd00::1")
	tests := []struct {
		name      string
		local     netip.Addr
		nodes     map[string]*meshapi.Node
		endpoints map[string]*meshapi.Endpoint
		want      []datapath.Entry
		stats     ComputeStats
	}{
		{name: "empty cluster", local: v4},
		{
			name:  "node pod CIDRs route via the node",
			local: v4,
			nodes: map[string]*meshapi.Node{"a": node("a", []string{"192.168.1.1"}, "10.2.1.0/24", "fd02:1::/64")},
			want:  []datapath.Entry{entry("10.2.1.0/24", "192.168.1.1"), entry("fd02:1::/64", "192.168.1.1")},
		},
		{
			name:      "endpoint covered by its node's CIDR adds nothing",
			local:     v4,
			nodes:     map[string]*meshapi.Node{"a": node("a", []string{"192.168.1.1"}, "10.2.1.0/24")},
			endpoints: map[string]*meshapi.Endpoint{"k1": endpoint("a", "10.2.1.9")},
			want:      []datapath.Entry{entry("10.2.1.0/24", "192.168.1.1")},
		},
		{
			name:      "uncovered endpoint IPs become host prefixes of either family",
			local:     v4,
			nodes:     map[string]*meshapi.Node{"a": node("a", []string{"192.168.1.1"})},
			endpoints: map[string]*meshapi.Endpoint{"k1": endpoint("a", "10.2.7.9", "fd02::9")},
			want:      []datapath.Entry{entry("10.2.7.9/32", "192.168.1.1"), entry("fd02::9/128", "192.168.1.1")},
		},
		{
			name:      "endpoint covered by another node's CIDR still gets a host prefix via its own node",
			local:     v4,
			nodes:     map[string]*meshapi.Node{"a": node("a", []string{"192.168.1.1"}, "10.2.1.0/24"), "b": node("b", []string{"192.168.1.2"})},
			endpoints: map[string]*meshapi.Endpoint{"k1": endpoint("b", "10.2.1.77")},
			want:      []datapath.Entry{entry("10.2.1.0/24", "192.168.1.1"), entry("10.2.1.77/32", "192.168.1.2")},
		},
		{
			name:      "endpoint on an unknown node is skipped and counted",
			local:     v4,
			endpoints: map[string]*meshapi.Endpoint{"k1": endpoint("ghost", "10.2.7.9")},
			stats:     ComputeStats{EndpointsWithoutNode: 1},
		},
		{
			name:  "tunnel IP prefers the local family",
			local: v6,
			nodes: map[string]*meshapi.Node{"a": node("a", []string{"192.168.1.1", "fd00::a"}, "10.2.1.0/24")},
			want:  []datapath.Entry{entry("10.2.1.0/24", "fd00::a")},
		},
		{
			name:  "tunnel IP falls back to the first address",
			local: v6,
			nodes: map[string]*meshapi.Node{"a": node("a", []string{"192.168.1.1", "192.168.1.2"}, "10.2.1.0/24")},
			want:  []datapath.Entry{entry("10.2.1.0/24", "192.168.1.1")},
		},
		{
			name:  "two nodes claiming one CIDR: the smaller name wins",
			local: v4,
			nodes: map[string]*meshapi.Node{"b": node("b", []string{"192.168.1.2"}, "10.2.1.0/24"), "a": node("a", []string{"192.168.1.1"}, "10.2.1.0/24")},
			want:  []datapath.Entry{entry("10.2.1.0/24", "192.168.1.1")},
			stats: ComputeStats{DuplicatePrefixes: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 5 { // map order varies; the result must not
				got, st := ComputeEntries("east", 2, tt.local, tt.nodes, tt.endpoints)
				sortEntries(got)
				want := slices.Clone(tt.want)
				sortEntries(want)
				if len(want) == 0 {
					require.Empty(t, got)
				} else {
					require.Equal(t, want, got)
				}
				require.Equal(t, tt.stats, st)
			}
		})
	}
}

func sortEntries(es []datapath.Entry) {
	slices.SortFunc(es, func(a, b datapath.Entry) int { return a.Prefix.Compare(b.Prefix) })
}

func TestInvalidReason(t *testing.T) {
	tests := []struct {
		value  string
		reason string
	}{
		{`{`, ReasonMalformed},
		{`{"cluster":"east","clusterID":2,"name":"n","internalIPs":["10.0.0.1"],"podCIDRs":["0.0.0.0/0"]}`, ReasonInvalidPrefix},
		{`{"cluster":"east","clusterID":2,"name":"n","podCIDRs":[]}`, ReasonMissingField},
		{`{"cluster":"East","clusterID":2,"name":"n","internalIPs":["10.0.0.1"],"podCIDRs":[]}`, ReasonInvalidName},
		{`{"cluster":"east","clusterID":2,"name":"n","internalIPs":["127.0.0.1"],"podCIDRs":[]}`, ReasonInvalidAddress},
	}
	for _, tt := range tests {
		_, err := meshapi.DecodeNode([]byte(tt.value))
		require.Error(t, err, tt.value)
		require.Equal(t, tt.reason, InvalidReason(err), "%s: %v", tt.value, err)
	}
}
