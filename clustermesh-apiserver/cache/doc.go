// Package cache is the cache tier of clustermesh-apiserver (DESIGN.md §10):
// it watches every remote cluster once, with exactly the agent's code
// (pkg/clustermesh.Mesh: the same config directory format, validation,
// conflict registry, liveness), and mirrors what it accepted into this
// cluster's own embedded etcd under meshapi.CacheRoot, from where the
// cluster's agents read it through a read-only proxy of their own.
//
// Design decisions a newcomer would otherwise trip on:
//
//   - Level-triggered writer. The Mesh hands over each remote's full
//     validated state after every batch (clustermesh.StateSink); the cache
//     reduces it to the keys agents need (Entries) and keeps the wanted key
//     set per cluster. One goroutine compares wanted with what etcd holds
//     and writes the difference in transactions of at most MaxTxnOps,
//     entries before a cluster's status: an agent programs a cluster only
//     once its status key exists, so it never acts on a half-written first
//     listing. A failed write is retried by the next pass.
//   - Only what routing needs: nodes as published, and per pod only the IPs
//     outside their node's pod CIDRs (meshapi.OutsideNodeCIDRs). An agent's
//     state thus grows with remote nodes, not with remote pods.
//   - The service importer reads the remotes through the cache's sessions
//     (Options.Services): they also list the remotes' exported services
//     and hand them over in-process, never into etcd, so each remote proxy
//     serves one connection per replica and agents never see services.
//   - Outside the peers' view. CacheRoot is not under the "podmesh/" prefix
//     the peers' etcd role may read, and the peers' proxy refuses any
//     request that touches it: no cluster learns a third cluster's data
//     through a neighbour.
//   - Stale, not gone. A remote that becomes unreachable keeps its entries;
//     its status key says not ready, why and since when. A remote whose file
//     is removed, or that is refused, is deleted from the cache at once
//     (config key first), which agents turn into a withdrawal.
//   - Restarts. The data directory is reused, so the cache starts with the
//     previous run's keys: they are kept (and served, marked not ready)
//     until every configured remote has synced or the sync timeout passed,
//     then the keys of clusters no longer configured are deleted. The
//     canary meshapi.CacheSyncedKey is written then; an agent that lists a
//     replica without it waits instead of withdrawing what is absent.
//   - Replicas. Each clustermesh-apiserver replica runs its own etcd and
//     cache; meshapi.CacheEpochKey (random, once per data directory) lets an
//     agent notice that its connection landed on another replica, whose
//     revisions mean nothing to its listing, and re-list.
package cache
