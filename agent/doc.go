// Command podmesh-agent runs on every node (a DaemonSet pod on the host
// network). It learns its own node from the local Kubernetes API, watches
// every remote cluster named in its config directory, and drives the datapath
// reconciler so that every remote pod CIDR is one tunnel hop away.
//
//	podmesh-agent --cluster-name=west --cluster-id=2 --pod-cidrs=10.2.0.0/16 [flags]
//	podmesh-agent status [--status-listen=127.0.0.1:9876] [--json]
//
// The wiring is deliberately thin: clustermesh.Mesh writes the desired set,
// datapath.Reconciler reads it, and the status server serves both (JSON at
// /status, /healthz, /readyz, Prometheus metrics at /metrics). Bad flags fail
// before anything starts, each with the flag's name and the reason. The agent
// exits on SIGTERM leaving the kernel state in place, so a restart or an
// upgrade drops no packet; the next agent adopts that state and prunes only
// after every remote has synced or --sync-timeout passed.
package main
