// Package kubesync mirrors one cluster's Kubernetes state into its embedded
// etcd in wire format v1 (package meshapi): Nodes, Pods (as endpoints) and
// Services with their EndpointSlices, plus the cluster config, the heartbeat
// and one sync canary per kind.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Level-triggered. Informer events only record the desired value of an
//     etcd key (or its absence) in a map and put the key on a work queue.
//     A worker takes a key, reads the latest desired value, and makes etcd
//     match. A burst of updates of one object therefore costs one write: the
//     queue holds a key at most once, every key waits CoalesceDelay before
//     it is processed, and the worker reads the value at processing time.
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
//   - Services: every Service except ExternalName is published with its
//     ports and the endpoints of all its EndpointSlices (deduplicated by IP,
//     sorted, ready if any slice says so).
package kubesync
