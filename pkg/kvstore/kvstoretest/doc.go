// Package kvstoretest starts what podmesh's etcd-facing tests need: an
// embedded etcd that serves clients over mutual TLS on loopback, the
// certificates and etcd-client YAML files to reach it, and a TCP forwarder
// that can be cut and restored to simulate a remote that becomes unreachable.
//
// Everything listens on 127.0.0.1 with kernel-chosen ports and is stopped
// through tb.Cleanup; nothing needs root.
package kvstoretest
