// Package certs creates the certificates a podmesh mesh runs on: one CA per
// cluster, the serving certificate of that cluster's clustermesh-apiserver
// proxy, and one client certificate per peer cluster (CN "remote-<peer>"),
// signed by the serving cluster's CA. Keys are ECDSA P-256 by default
// (Options.KeyType selects P-384 or RSA) and are written 0600.
//
// VerifyIssued and CheckValidity return sentinel errors (ErrExpired,
// ErrNotYetValid, ErrNotSignedByCA, ErrWrongUsage) without file names; the
// caller, which knows the files, wraps them so a human reads which file is
// wrong and why.
//
// WriteSecretVolume lays a Secret's keys out on disk the way the kubelet
// mounts a Secret volume (files behind a "..data" symlink that is swapped
// atomically on update), so tests and the lab read configuration through the
// same symlinks a pod does.
//
// The package is the library under the certificate CLI
// (certs/cmd/podmesh-certs), the tests and the lab; it never prints or logs
// key material.
package certs
