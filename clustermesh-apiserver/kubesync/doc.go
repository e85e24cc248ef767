// Package kubesync mirrors one cluster's Kubernetes state into its embedded
// etcd in wire format v1 (package meshapi): Nodes, Pods (as endpoints) and
// exported Services (those with a ServiceExport) with their EndpointSlices,
// plus the cluster config, the heartbeat and one sync canary per kind. It
// also writes the Valid and Ready conditions of every ServiceExport.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Level-triggered. Informer events only record the desired value of an
//     etcd key (or its absence) in a map and put the key on a work queue.
//     A worker takes a key, reads the latest desired value, and makes etcd
//     match. The queue holds a key at most once and the worker reads the
//     value at processing time. Coalescing costs nothing when there is
//     nothing to coalesce: a key that was not written within CoalesceDelay
//     is queued at once (a lone change reaches etcd in well under a
//     millisecond of sync time); a key written more recently waits for the
//     rest of that window, so a burst of updates of one object costs one
//     write per window with its latest value.
//     Keys that are ready together are written together: one dispatcher
//     batches them (up to etcd's 128 operations per transaction) and the
//     workers commit each batch as one transaction.
//   - The syncer is the only writer of its keys (the proxy is read-only and
//     etcd's roles forbid everyone else), so it knows what etcd holds: the
//     full listing at start plus its own successful writes. A write whose
//     value etcd already holds is skipped without a round trip.
//   - Nothing is deleted before the first full listing of its kind. At start
//     etcd still holds the previous run's state (the data directory is
//     reused); a key no longer backed by a Kubernetes object is deleted only
//     once that kind's informer has synced. Remote watchers therefore never
//     see a live object disappear and come back across a restart.
//   - The canary podmesh/v1/synced/<cluster>/<kind> is written once per
//     start, when that kind is listed, every desired key of it is in etcd and
//     every stale key of it is gone. Stale keys that belong to no kind (e.g.
//     the heartbeat of a former cluster name) are deleted once every canary
//     is written.
//   - What is not exported, and why (the reason is a label of
//     podmesh_apiserver_objects_not_exported): nodes without an InternalIP or
//     with a pod CIDR outside --pod-cidrs; host-network pods, pods without an
//     IP, finished pods (phase Succeeded or Failed, whose IPs may already be
//     reused), and pods with an IP outside --pod-cidrs; ExternalName
//     services. Anything that fails meshapi's own validation is "invalid".
//   - Services (Multi-Cluster Services API, KEP-1645): a Service is
//     published only while a ServiceExport (multicluster.x-k8s.io/v1beta1,
//     the stored version) of the same namespace/name exists; otherwise its
//     key is absent, and the listing-time cleanup deletes what a previous
//     run left. The entry is meshapi's service format 2: export time, type,
//     ports with appProtocol, session affinity, IP families, and the
//     endpoints of all its EndpointSlices with their conditions copied as
//     they are (ready, serving, terminating), hostname, node, zone and pod;
//     deduplicated by IP, sorted, addresses outside the pod CIDRs left out.
//   - ServiceExport conditions are written by server-side apply of the
//     status subresource under field manager "podmesh-exporter", and only
//     the types this package owns (Valid, Ready), so the importer's Conflict
//     condition (its own field manager) is never touched. A write happens
//     only when the computed conditions differ from the cached object, and
//     not again while the cache has not seen the previous write yet.
//   - When the API server does not serve ServiceExports at start (CRDs not
//     installed), nothing is exported and a warning says so; installing the
//     CRDs later needs a restart.
package kubesync
