// Command bench-agent measures the agent's control plane against a real etcd
// (bin/etcd, a separate process, mutual TLS on loopback), so that the
// numbers are the agent's own: its memory does not include the etcd.
//
//	go run ./test/bench-agent -mode=latency -changes=1000 [-proxy]
//	go run ./test/bench-agent -mode=memory -clusters=50 -nodes=100 -endpoints=1000
//
// latency: one remote cluster (100 nodes, 1,000 endpoints) is synced; then
// -changes writes are made one after another (alternately adding an endpoint
// whose IP is outside its node's pod CIDR, which adds a /32, and deleting
// it again). For each, the time from issuing the etcd write to the moment the
// agent's desired set (the datapath hand-off) reflects it is recorded, and
// the percentiles are printed. With -proxy the agent reads through
// clustermesh-apiserver's read-only mTLS proxy (run in this process).
//
// memory: -clusters remote clusters, each with -nodes nodes and -endpoints
// endpoints (10% of them outside their node's pod CIDR), are published in
// one etcd, and the agent is given one config file per cluster. Once every
// cluster has synced, the heap in use and the RSS of this process (the mesh
// plus the desired set, no etcd) are printed, next to a baseline taken
// before the mesh started.
//
// cache: the cache tier at a mesh's scale (docs/scale.md):
//
//	go run ./test/bench-agent -mode=cache -clusters=250 -nodes=100 -endpoints=1000 -storm=1000 -churn=30s [-kernel]
//
// -clusters mock remotes (every node its own pod CIDR and IP, shape.go) in
// one etcd behind the real read-only proxy; a cache replica mirrors them; an
// agent (a child process) syncs from the replica; then, for -churn, every
// cluster churns at Cilium's CI rates (churn.go; achieved rate against the
// target printed) while single writes to one remote are timed to the agent's
// desired set and, with -kernel, to the entry in an ebpf datapath's ipcache
// (kernel.go: root, its own network namespace and bpffs directory, removed
// at the end, on failure and on SIGINT); the proxies' connections and
// watches and the cache's remote-session failures are printed at the end of
// the churn and after the storm (proxystats.go).
//
// It needs bin/etcd (make tools), and no root but for -kernel.
package main
