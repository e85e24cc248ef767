// Package certs creates the certificates a podmesh mesh runs on: one CA per
// cluster, the serving certificate of that cluster's clustermesh-apiserver
// proxy, and one client certificate per peer cluster (CN "remote-<peer>"),
// signed by the serving cluster's CA. Keys are ECDSA P-256 by default and are
// written 0600.
//
// The package is the library under the certificate CLI, the tests and the
// lab; it never prints or logs key material.
package certs
