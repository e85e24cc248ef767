// Package clustermesh is the agent's view of the remote clusters: it watches
// the config directory (one etcd-client YAML file per remote, mounted from a
// Secret), runs one watcher per remote, validates everything a remote
// publishes, reduces it to datapath entries and reports status and metrics.
//
// Design decisions a newcomer would otherwise trip on:
//
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
//     takes at most one inotify wakeup (or one 500ms poll).
//   - Conflicts (duplicate cluster ID, overlapping pod CIDRs) are settled by
//     the Registry: the cluster admitted first keeps its claim while it stays
//     configured, also across reconnects; the later one is refused with a
//     reason naming both and retries as soon as a claim is released.
//     Clusters present at agent start are admitted in the order their
//     sessions reach the remote, which is not fixed; a conflict between
//     them is a configuration error to fix, and status says which won.
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
package clustermesh
