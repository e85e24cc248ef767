// Package clustermeshtest plays the remote side of a mesh for tests and
// benchmarks: a remote cluster's etcd (embedded, mutual TLS, optionally behind
// a TCP forwarder that can be cut) with its wire-format v1 entries, the
// agent's config directory laid out like a kubelet Secret volume, and a
// recorder of every change the mesh makes to the desired set.
package clustermeshtest
