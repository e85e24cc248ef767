// Package proxy is the read-only, mutually authenticated etcd gRPC endpoint
// that remote clusters watch: etcd's own gRPC proxy (server/v3/proxy/grpcproxy)
// behind an allow-list of RPCs and a TLS client-certificate check.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Only four RPCs pass: KV.Range, KV.Txn when no operation in it (nested
//     transactions included) writes, Watch.Watch and Maintenance.Status. The
//     allow-list sits in a gRPC interceptor, and every service that is not
//     registered (Lease, Cluster, Auth, Lock, Election) is caught by the
//     unknown-service handler, so a new etcd RPC is refused by default. The
//     refusal is codes.PermissionDenied, logged with the peer's CN and
//     counted.
//   - Watches go through grpcproxy's watch proxy, which coalesces identical
//     watches: any number of remote agents watching the same prefix cost etcd
//     one watch.
//   - Range does not use grpcproxy's KV cache. That cache is invalidated
//     only by writes that pass through the proxy, and here none ever do, so
//     a serializable read would be served stale forever.
//   - The etcd client handed to the proxy should authenticate as the
//     read-only etcd user (etcdserver.ReaderUser): if the allow-list ever
//     had a hole, etcd itself would still refuse the write.
//   - TLS: the client certificate must chain to the configured CA
//     (tls.RequireAndVerifyClientCert) and its CN must be on the allow-list
//     (checked in VerifyConnection), so a peer whose CN was removed fails the
//     handshake itself. Failed handshakes are counted by reason
//     (unknown_authority, expired, peer_not_allowed, no_certificate, other).
//   - ReloadingServerTLS re-reads the certificate, key and client CA (at most
//     once a second, when a connection arrives), so a rotated Secret takes
//     effect for new connections without a restart; established watches
//     keep their session.
package proxy
