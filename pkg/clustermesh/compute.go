package clustermesh

import (
	"net/netip"

	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// ComputeStats says what ComputeEntries left out.
type ComputeStats struct {
	// EndpointsWithoutNode counts endpoints whose node is unknown; their
	// uncovered IPs have no tunnel endpoint and are skipped.
	EndpointsWithoutNode int
	// DuplicatePrefixes counts prefixes claimed by more than one node or
	// endpoint of the cluster; a node wins over an endpoint, and among
	// equals the smallest name or key.
	DuplicatePrefixes int
}

// ComputeEntries reduces one remote cluster's validated nodes and endpoints
// to datapath entries:
//
//   - every pod CIDR of a node → that node's tunnel IP;
//   - every endpoint IP not covered by its own node's pod CIDRs → a host
//     prefix (/32, /128) via its node's tunnel IP.
//
// nodes is keyed by node name, endpoints by etcd key. The tunnel IP of a node
// is its first InternalIP of the family of local (the local tunnel source),
// or its first InternalIP when it has none of that family. The result is
// deterministic for the same input, whatever the map order.
func ComputeEntries(cluster string, clusterID uint32, local netip.Addr, nodes map[string]*meshapi.Node, endpoints map[string]*meshapi.Endpoint) ([]datapath.Entry, ComputeStats) {
	type owner struct {
		endpoint bool   // nodes sort before endpoints
		key      string // node name or endpoint key
	}
	less := func(a, b owner) bool {
		if a.endpoint != b.endpoint {
			return !a.endpoint
		}
		return a.key < b.key
	}
	type claim struct {
		entry datapath.Entry
		owner owner // the smallest wins
	}
	var st ComputeStats
	claims := make(map[netip.Prefix]claim, len(nodes))
	add := func(p netip.Prefix, via netip.Addr, o owner) {
		if old, ok := claims[p]; ok {
			st.DuplicatePrefixes++
			if less(old.owner, o) {
				return
			}
		}
		claims[p] = claim{entry: datapath.Entry{Prefix: p, TunnelEndpoint: via, ClusterID: clusterID, Cluster: cluster}, owner: o}
	}
	for name, n := range nodes {
		via := TunnelIP(n.InternalIPs, local)
		for _, p := range n.PodCIDRs {
			add(p, via, owner{key: name})
		}
	}
	for key, e := range endpoints {
		n, ok := nodes[e.Node]
		if !ok {
			st.EndpointsWithoutNode++
			continue
		}
		via := TunnelIP(n.InternalIPs, local)
		for _, ip := range e.IPs {
			if meshapi.AddrWithin(ip, n.PodCIDRs) {
				continue
			}
			add(meshapi.HostPrefix(ip), via, owner{endpoint: true, key: key})
		}
	}
	out := make([]datapath.Entry, 0, len(claims))
	for _, c := range claims {
		out = append(out, c.entry)
	}
	return out, st
}

// TunnelIP picks the address a remote node is reached at: the first of ips
// in the family of local, else the first of ips.
func TunnelIP(ips []netip.Addr, local netip.Addr) netip.Addr {
	if local.IsValid() {
		for _, ip := range ips {
			if ip.Is4() == local.Is4() {
				return ip
			}
		}
	}
	if len(ips) == 0 {
		return netip.Addr{}
	}
	return ips[0]
}
