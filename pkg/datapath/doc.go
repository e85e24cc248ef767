// Package datapath makes remote pod CIDRs reachable: it holds the desired set
// of remote prefixes (Desired, written by the agent's mesh state) and the
// reconciler and backends (native, vxlan, ebpf) that make the kernel match it.
//
// The hand-off is deliberately small: an Entry is a prefix, the remote node
// that is its tunnel endpoint, and the remote cluster's ID. Everything the
// agent knows about remote clusters is reduced to that set before it reaches
// the kernel.
package datapath
