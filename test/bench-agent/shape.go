package main

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Addressing of the mock clusters: cluster i has the pod CIDR
// 10.(octet).0.0/16; its nodes' pod CIDRs are consecutive blocks of one
// length from 10.(octet).0.0 up to 10.(octet).200.0, and the IPs outside
// every node CIDR (cluster.uncovered) come from 10.(octet).200.0 up. Node IPs
// come from 100.64.0.0/10, 16,384 per cluster. So every node of every cluster
// has its own pod CIDR and its own IP, up to 51,200 addresses of node CIDRs
// per cluster: 200 nodes of a /24, 6,400 nodes of a /29.

// nodeSpace is the address space of a cluster's node CIDRs (10.x.0.0 up to
// 10.x.200.0).
const nodeSpace = 200 << 8

// maxUncovered is how many IPs cluster.uncovered can give (10.x.200.0 up to
// the end of the /16).
const maxUncovered = 56 << 8

// nodeBitsFor returns the length of the per-node pod CIDRs for a cluster of
// nodes nodes and endpoints endpoints: the largest block (at most a /24)
// such that every node gets its own and each holds its endpoints' IPs (the
// node's pod CIDR address + 2 on). An error if no block fits.
func nodeBitsFor(nodes, endpoints int) (int, error) {
	if nodes < 1 || nodes >= 1<<14 {
		return 0, fmt.Errorf("%d nodes per cluster: want 1..16383", nodes)
	}
	perNode := (endpoints+nodes-1)/nodes + 2
	for bits := 24; bits <= 30; bits++ {
		size := 1 << (32 - bits)
		if size < perNode {
			break
		}
		if nodes*size <= nodeSpace {
			return bits, nil
		}
	}
	return 0, fmt.Errorf("%d nodes with %d endpoints per cluster: no per-node pod CIDR fits %d nodes and %d endpoints each below 10.x.200.0", nodes, endpoints, nodes, perNode-2)
}

// newCluster is mock cluster i (name c<i>, cluster ID i+2) with per-node
// pod CIDRs of nodeBits.
func newCluster(i, nodeBits int) cluster {
	return cluster{name: "c" + strconv.Itoa(i), id: uint32(i + 2), index: i, nodeBits: nodeBits}
}

func addr4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
