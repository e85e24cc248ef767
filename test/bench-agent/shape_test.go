package main

import (
	"net/netip"
	"testing"
)

// TestEveryNodeHasItsOwnPodCIDRAndIP checks the mock addressing at the
// harness's shapes: node pod CIDRs never overlap (within or across
// clusters), lie in their cluster's pod CIDR and below the uncovered range,
// hold their endpoints' IPs, and node IPs are distinct.
func TestEveryNodeHasItsOwnPodCIDRAndIP(t *testing.T) {
	for _, shape := range []struct{ clusters, nodes, endpoints, bits int }{
		{250, 100, 1000, 24},
		{50, 5000, 5000, 29},
		{3, 6400, 6400, 29},
	} {
		bits, err := nodeBitsFor(shape.nodes, shape.endpoints)
		if err != nil {
			t.Fatalf("%+v: %v", shape, err)
		}
		if bits != shape.bits {
			t.Fatalf("%+v: /%d per node, want /%d", shape, bits, shape.bits)
		}
		ips := make(map[netip.Addr]bool)
		cidrs := make(map[netip.Prefix]bool)
		for i := range shape.clusters {
			c := newCluster(i, bits)
			lastEndpoint := (shape.endpoints+shape.nodes-1)/shape.nodes + 1 // endpoint IPs are the CIDR's address + 2 on
			for k := range shape.nodes {
				p := c.nodeCIDR(k)
				if p.Bits() != bits || p.Masked() != p || !c.cidr().Contains(p.Addr()) {
					t.Fatalf("%+v: cluster %d node %d: pod CIDR %s not a /%d of %s", shape, i, k, p, bits, c.cidr())
				}
				if cidrs[p] {
					t.Fatalf("%+v: cluster %d node %d: pod CIDR %s repeats", shape, i, k, p)
				}
				cidrs[p] = true
				last := p.Addr()
				for range lastEndpoint {
					last = last.Next()
				}
				if !p.Contains(last) || p.Contains(c.uncovered(0)) {
					t.Fatalf("%+v: cluster %d node %d: %s does not hold %s or holds the uncovered %s", shape, i, k, p, last, c.uncovered(0))
				}
				if ip := c.nodeIP(k); ips[ip] || !netip.MustParsePrefix("100.64.0.0/10").Contains(ip) {
					t.Fatalf("%+v: cluster %d node %d: node IP %s repeats or lies outside 100.64.0.0/10", shape, i, k, ip)
				}
				ips[c.nodeIP(k)] = true
			}
			// Consecutive equal-length blocks: distinct blocks never overlap,
			// and the last one ends below the uncovered range.
			end := c.nodeCIDR(shape.nodes - 1)
			if end.Contains(c.uncovered(0)) || end.Addr().Compare(c.uncovered(0)) > 0 {
				t.Fatalf("%+v: cluster %d: last node CIDR %s reaches the uncovered range", shape, i, end)
			}
		}
	}
}

func TestShapesWhoseNodesCannotHaveTheirOwnCIDRAreRefused(t *testing.T) {
	for _, shape := range []struct{ nodes, endpoints int }{
		{12801, 12801}, // 12,801 /30s do not fit below 10.x.200.0
		{5000, 50000},  // 10 endpoints per node need a /28: 5,000 of them do not fit
		{0, 10},
	} {
		if bits, err := nodeBitsFor(shape.nodes, shape.endpoints); err == nil {
			t.Fatalf("%+v: got /%d, want an error", shape, bits)
		}
	}
}
