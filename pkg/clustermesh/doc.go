// Package clustermesh is the agent's view of the remote clusters: it watches
// the config directory (one etcd-client YAML file per remote, mounted from a
// Secret), runs one watcher per remote, validates everything a remote
// publishes, reduces it to datapath entries and reports status and metrics.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Three parts per remote: the Mesh owns a status record per configured
//     cluster (status.go); per file version a goroutine (remote.go) opens
//     one session after the other with a wait.Backoff between them; a
//     session (session.go) is one connection in the manner of etcd's
//     concurrency.Session: it owns its client and context, ends on its own
//     (connection lost, config changed, displaced) and closes Done.
//   - The desired set is written per cluster with SetCluster, computed from
//     the full validated state of that cluster after every batch of events.
//     It is level-triggered: a reconnect re-lists into a fresh state and
//     replaces the cluster's set in one call, so an entry that still exists
//     is never withdrawn, not even for an instant, and one that vanished
//     while the remote was unreachable is withdrawn on the first listing.
//   - Nothing is pushed for a session before both the node and the endpoint
//     listings are complete, and a listing starts only after the remote's
//     sync canaries (meshapi.SyncedKinds) exist: a remote apiserver that is
//     still filling its etcd never causes withdrawals.
//   - An unreachable remote (its heartbeat read fails), a stale heartbeat, a
//     broken or changed config file: the cluster's entries stay; only the
//     file's removal (or a refusal of the remote's own config) withdraws
//     them. Removal withdraws synchronously in the directory scan, so it
//     takes at most one file system event (or one 500ms poll).
//   - Conflicts (duplicate cluster ID, overlapping pod CIDRs) are settled by
//     the Registry from the configs alone, never from arrival order: ranked
//     by the optional established time (earlier first, present before
//     absent), then the lower cluster ID, then the lower name, each
//     candidate is admitted unless it clashes with one ranked before it. So
//     every node reaches the same verdict, and a newcomer never displaces an
//     established cluster. At start, admission waits (bounded) until every
//     configured remote has presented its config, so a loser is never
//     pushed after a restart.
//   - Liveness is a small read every ProbeInterval with a ProbeTimeout
//     deadline, started once the cluster is synced: a failed read (with no
//     listing or watch traffic heard meanwhile) makes the cluster not ready
//     at once but keeps the session; only RequestTimeout of silence ends it.
//   - Each version of a config file runs as a generation. A newer version
//     (certificate rotation) or the file's removal bumps the generation and
//     a stale generation's writes are dropped, so the old session can wind
//     down in the background without racing the new one.
//   - Every entry is untrusted: meshapi.Decode* checks it on its own,
//     Validate*For against its key and the cluster's declared config. A bad
//     entry is dropped, logged with its key and reason, and counted by reason
//     (label values are the Reason* constants).
//   - Pruning of kernel state the agent did not create in this run is
//     allowed (Desired.AllowPrune) only once every configured remote has
//     synced at least once, or after the sync timeout.
//   - Two consumers of the same code. Mesh is direct mode (the agent dials
//     every remote) and, with Options.States, the cache tier's watcher in
//     clustermesh-apiserver (package cache), which mirrors every validated
//     remote into its own etcd; with Options.Services its sessions also
//     list each remote's exported services and hand them over raw
//     (ServiceSink), so the cluster's service importer needs no connection
//     of its own. CacheMesh (cachemesh.go) is the agent's
//     cache mode: one connection to its own cluster's cache, one list+watch
//     of meshapi.CacheRoot; each cached entry still goes through
//     clusterState's validation, the Registry and ComputeEntries, so an
//     agent and its cache cannot disagree on what an entry means. A session
//     ends when the connection lands on another replica (another epoch),
//     and the next one re-lists into a fresh view; what the new replica
//     lacks is withdrawn only after its canary (meshapi.CacheSyncedKey).
package clustermesh
