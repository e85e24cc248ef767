// Command podmesh-certs creates and maintains the certificates of a podmesh
// mesh and renders the Secrets that carry them.
//
// Every cluster has its own directory (--dir), owned by whoever operates that
// cluster's clustermesh-apiserver:
//
//	<dir>/ca.crt, ca.key           the cluster's CA                      (init)
//	<dir>/server.crt, server.key   the proxy's serving certificate       (server)
//	<dir>/peers/<peer>.crt, .key   client certificate CN remote-<peer>,  (peer)
//	                               signed by THIS cluster's CA, handed to
//	                               cluster <peer> so its agents can read
//	<dir>/allowed-peers            CNs the proxy must accept             (connect)
//
// The cluster name is recorded in the CA's subject (CN podmesh-ca-<cluster>),
// so later commands read it from ca.crt instead of trusting a flag.
//
// Design decisions:
//   - Nothing is overwritten without --force; rotate is the one command whose
//     job is to replace files, and it only replaces leaf certificates.
//   - Every error names the file at fault and why (expired at, not yet valid,
//     not signed by which CA, permission denied, key does not match).
//   - Keys are ECDSA P-256 unless --key-type says otherwise and are written
//     0600; Secret manifests, which hold keys, are written 0600 too.
//   - The command never prints key material except into the Secret manifest
//     the user asked for.
//   - Subcommands run through run(), which takes its output streams and clock
//     as arguments, so the tests drive the real command in-process.
package main
