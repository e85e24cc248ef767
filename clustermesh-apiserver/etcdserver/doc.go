// Package etcdserver runs the embedded etcd that holds one cluster's podmesh
// state, with authentication on, and hands out the two clients the rest of
// clustermesh-apiserver uses: a writer (the Kubernetes sync) and a reader
// (the read-only proxy).
//
// Design decisions a newcomer would otherwise trip on:
//
//   - etcd listens on loopback only, in plain text; nothing outside the
//     process's network namespace can reach it. Remote clusters reach the
//     state only through the read-only proxy (package proxy).
//   - Three etcd users: root (administration only), a writer whose role may
//     read and write the podmesh/ prefix, and a reader whose role may only
//     read it (plus etcd's "__lostleader" key, which etcd's gRPC proxy
//     watches to track the leader). The reader is the proxy's identity, so a
//     bug in the proxy still cannot write. A fourth user, the cache reader,
//     is the identity of the proxy that serves the cache tier to this
//     cluster's agents: it may read "podmesh-cache/" only, which the writer
//     may also write and the (peers') reader may not read at all.
//   - Passwords are random, new at every start, held in memory and never
//     logged — with one exception: the root password is also kept in the
//     data directory (0600), because the data directory is reused across
//     restarts and the new process must log in as root to rotate every
//     password. Whoever can read the data directory can already read or
//     replace the whole database, so the file widens nothing. If the stored
//     root password does not work, the data directory is wiped and rebuilt.
//   - The data directory is reused rather than wiped so that the revision
//     keeps growing across restarts: a remote watcher that resumes from its
//     last revision then sees exactly what changed while the apiserver was
//     down, and no spurious deletions. The sync, not this package, deletes
//     what no longer exists in Kubernetes.
//
// Start is meant for tests as well: pkg/clustermesh and test/lab start a real
// etcd with auth through it.
package etcdserver
