// Package proxytest starts a complete read-only endpoint for tests: an
// embedded etcd with auth (package etcdserver), a fresh CA with a serving
// certificate for 127.0.0.1, and the read-only mTLS proxy (package proxy)
// on a free loopback port. Tests write through Env.Etcd.Writer and read
// through clients made with Env.Client, exactly as a remote agent would.
//
//	env := proxytest.Start(t, "remote-west")
//	_, _ = env.Etcd.Writer.Put(ctx, meshapi.NodeKey("east", "n1"), value)
//	c := env.Client(t, "remote-west") // *clientv3.Client over mTLS
//	caFile, certFile, keyFile := env.PKI.WriteClientFiles(t, "remote-west")
//
// Everything is stopped through tb.Cleanup.
package proxytest
