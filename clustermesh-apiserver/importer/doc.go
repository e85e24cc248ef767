// Package importer is the import half of podmesh's Multi-Cluster Services
// API support (KEP-1645, DESIGN.md §9): it reads the exported services of
// every cluster of the mesh and writes, into the local cluster only, one
// ServiceImport per exported namespace/name, a derived Service for each
// ClusterSetIP import, and one set of EndpointSlices per source cluster, so
// that stock CoreDNS (kubernetes plugin, multicluster option) answers
// clusterset.local and kube-proxy load-balances the ClusterSetIP.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Sources. Each remote is read through its file in the config directory
//     (the agents' etcd-client YAML, read-only proxy, mTLS); the local
//     cluster's own export is read from the embedded etcd with the
//     read-only client, so it is merged exactly like a remote's. A session
//     checks the cluster config (name in file, key and value agree; the ID
//     is the one declared; a remote's ID and pod CIDRs clash with no other
//     cluster: clustermesh.Registry), waits for the services sync canary,
//     then lists and watches podmesh/v1/services/<cluster>/.
//   - Through the cache. Where clustermesh-apiserver runs its cache tier
//     (the default), the importer opens no connection of its own: the
//     cache's sessions (pkg/clustermesh.Mesh, which already checks the
//     cluster config and the canaries and admits through its Registry) also
//     list the remote's services and hand them over raw through a Feed,
//     which keeps only each remote's latest state, so a session never
//     waits for the importer. The importer validates the entries as it does
//     its own reads (only those whose value changed), withdraws a remote
//     the cache withdraws (file removed, config refused or displaced), and
//     takes each remote's liveness from the cache's status. Its own
//     directory scan still decides which remotes are configured, so a
//     remote the cache has not listed yet is pending, never removed. The
//     services are not written into the embedded etcd, so neither the
//     agents (podmesh-cache/) nor the peers (podmesh/) can read them.
//   - Trust nothing. Every entry is decoded and checked (meshapi, plus
//     Kubernetes' own name, port and protocol rules) before it can reach an
//     object. An entry with an endpoint outside the cluster's declared pod
//     CIDRs is refused whole and counted; a slice is labelled with the
//     cluster of the file
//     that delivered it, never with a name from the value; every object the
//     importer writes carries app.kubernetes.io/managed-by=importer.podmesh.io
//     and it never updates or deletes an object without that label.
//   - Privacy. A cluster without the serviceExports capability is an older
//     podmesh that publishes every Service; none of its services is
//     imported, and status says so.
//   - Level-triggered writer. Sessions replace a cluster's whole state after
//     every batch and wake the writer for the keys that changed; one
//     reconcile of a key recomputes everything of that key (Merge, then the
//     objects) and compares it with the informers' caches, writing only the
//     difference. A restart is just another reconcile, and orphans (objects
//     of a cluster that is no longer configured, imports whose exports are
//     gone) are found through the owned objects' labels.
//   - Failure semantics (DESIGN §6). A cluster's state stays when its
//     session fails: an unreachable control plane keeps its endpoints. A
//     configured cluster that has not been listed since this process
//     started is "pending": its slices from an earlier run are kept
//     untouched (and their annotations still give its export time and type
//     to the merge), so neither an importer restart nor a failover
//     withdraws anything. A reconnect replaces the state in one step after
//     a complete listing, so nothing that still exists is withdrawn. A
//     removed file withdraws its cluster at the next directory scan
//     (Timing.ScanInterval, 250ms) plus the deletes.
//   - KEP conflict rules (Merge): the oldest export wins (ties by cluster
//     name, so every cluster decides alike) and sets type and session
//     affinity; ports are the union, a clashing port is left out; a cluster
//     whose type differs is not imported. The reason goes on the local
//     ServiceExport's Conflict condition (server-side apply by field
//     manager podmesh-importer of that one condition, so the exporter's
//     Valid and Ready stay its own), on the ServiceImport (annotation
//     podmesh.io/conflict) and into a Warning Event.
//   - Names. The derived Service has the mcs-api reference name
//     (DerivedName). Imported slices carry kubernetes.io/service-name = the
//     derived name, never the exported name: CoreDNS indexes every slice by
//     that label for cluster.local, so the exported name there would add
//     remote pods to the local <svc>.<ns>.svc.cluster.local. Headless
//     imports get no derived Service (CoreDNS needs only the ServiceImport
//     and the multicluster labels) but the same labels; each endpoint's
//     hostname is its own or its pod's name (KEP-1645), which makes
//     <hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local resolve.
//   - Ports. The ServiceImport and the derived Service carry the merged
//     service ports; each cluster's slices carry that cluster's target
//     ports under the same port names (kube-proxy matches a selectorless
//     Service's ports to slice ports by name). The service ports of a
//     cluster are also kept in an annotation on its slices, so a restarted
//     importer can merge before it reaches the cluster.
//   - One writer. With leader election (a Lease), only the holder writes;
//     every instance keeps reading so a new leader starts warm. Rolling
//     updates briefly run two clustermesh-apiservers.
package importer
