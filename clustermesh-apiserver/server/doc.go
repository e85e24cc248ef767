// Package server wires clustermesh-apiserver together: flag parsing and
// validation, the embedded etcd (package etcdserver), the Kubernetes sync
// (package kubesync), the read-only proxy (package proxy), the service
// importer (package importer, with --clustermesh-config) and the health
// endpoint (/healthz, /readyz, /metrics, /status/imports). main only parses
// flags, registers the metrics and handles signals, so tests run the whole
// server in-process with New(cfg, log).Run(ctx, gatherer).
//
// Start-up order matters: certificates and the kubeconfig are loaded before
// anything listens, so a bad flag fails fast with a message naming the flag;
// then etcd, then the sync and the proxy. /readyz turns 200 only once every
// sync canary is written. Shutdown (context cancelled, e.g. SIGTERM) stops
// the proxy first, then the sync, then etcd.
package server
