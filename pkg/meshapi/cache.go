package meshapi

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// The cache tier's key layout (cache format v1). A clustermesh-apiserver that
// caches its remotes mirrors what it validated into its own etcd under
// CacheRoot and serves that to its own cluster's agents only.
//
// CacheRoot deliberately does not start with Root ("podmesh/"): the etcd role
// a peer's proxy reads with covers Root's range only, and "podmesh-cache/"
// sorts outside it, so no peer can ever read what this cluster caches of a
// third cluster. The cache format carries its own version ("v1" in CacheRoot,
// CacheFormat in every status value); a change to it changes CacheRoot's
// version, so agents of an older format find nothing rather than misread.
//
// Below CacheRoot the keys repeat the wire keys of Root without Root:
//
//	podmesh-cache/v1/epoch                          random, once per etcd data directory
//	podmesh-cache/v1/synced                         RFC 3339 time: every configured remote
//	                                                synced once (or the sync timeout passed)
//	podmesh-cache/v1/cluster-config/<cluster>       the remote's ClusterConfig, as admitted
//	podmesh-cache/v1/status/<cluster>               CacheStatus: freshness of the remote
//	podmesh-cache/v1/nodes/<cluster>/<node>         Node, as the remote published it
//	podmesh-cache/v1/endpoints/<cluster>/<ns>/<pod> Endpoint with only the IPs outside its
//	                                                node's pod CIDRs (absent when none)
//
// so CacheKeyToWire turns a cache key back into the wire key it mirrors and
// an agent validates a cached entry with exactly the checks of direct mode.
const (
	CacheRoot                = "podmesh-cache/v1/"
	CacheClusterConfigPrefix = CacheRoot + "cluster-config/"
	CacheStatusPrefix        = CacheRoot + "status/"
	CacheNodesPrefix         = CacheRoot + "nodes/"
	CacheEndpointsPrefix     = CacheRoot + "endpoints/"
	// CacheEpochKey names the etcd a replica serves: revisions of one
	// replica mean nothing to another, so an agent resumes a watch only
	// while the epoch it listed is the one it reads.
	CacheEpochKey = CacheRoot + "epoch"
	// CacheSyncedKey is the cache's canary: before it exists the cache may
	// still be filling, and an agent withdraws nothing for what is absent.
	CacheSyncedKey = CacheRoot + "synced"
	// CacheFormat is the version of the cache layout and CacheStatus.
	CacheFormat = 1
)

// WireToCacheKey returns the cache key that mirrors a wire key of Root.
func WireToCacheKey(key string) (string, error) {
	rest, ok := strings.CutPrefix(key, Root)
	if !ok {
		return "", fmt.Errorf("key %q: %w: want prefix %q", key, ErrInvalidKey, Root)
	}
	return CacheRoot + rest, nil
}

// CacheKeyToWire returns the wire key a cache key mirrors.
func CacheKeyToWire(key string) (string, error) {
	rest, ok := strings.CutPrefix(key, CacheRoot)
	if !ok {
		return "", fmt.Errorf("key %q: %w: want prefix %q", key, ErrInvalidKey, CacheRoot)
	}
	return Root + rest, nil
}

// CacheStatusKey returns podmesh-cache/v1/status/<cluster>.
func CacheStatusKey(cluster string) string { return CacheStatusPrefix + cluster }

// CacheStatus is the value at podmesh-cache/v1/status/<cluster>: how fresh
// the cache's copy of one remote cluster is. It is rewritten when Ready or
// Synced flips or the reason changes, not on every heartbeat, so agents are
// not woken by it in steady state.
type CacheStatus struct {
	Cluster   string `json:"cluster"`
	ClusterID uint32 `json:"clusterID"`
	// Synced is true once the cache holds a complete listing of the remote
	// (from this or an earlier session): agents program nothing of a
	// cluster before.
	Synced bool `json:"synced"`
	// Ready is true while the cache's session to the remote is connected,
	// listed and live. False means the cached entries are the last known
	// state (stale) since Since.
	Ready bool `json:"ready"`
	// Reason says why the remote is not ready.
	Reason string `json:"reason,omitempty"`
	// Since is when Ready last changed.
	Since time.Time `json:"since"`
	// LastHeartbeat is the remote's heartbeat as the cache last read it.
	LastHeartbeat time.Time `json:"lastHeartbeat,omitzero"`
	Format        int       `json:"format"`
}

// DecodeCacheStatus decodes and checks a CacheStatus value.
func DecodeCacheStatus(data []byte) (*CacheStatus, error) {
	var s CacheStatus
	if err := decodeStrict(data, &s, "cluster", "clusterID", "synced", "ready", "format"); err != nil {
		return nil, err
	}
	if err := ValidateClusterName(s.Cluster); err != nil {
		return nil, err
	}
	if s.Format != CacheFormat {
		return nil, fmt.Errorf("%w: cache format %d, want %d", ErrUnsupported, s.Format, CacheFormat)
	}
	return &s, nil
}

// OutsideNodeCIDRs returns the endpoint reduced to the IPs that lie outside
// its node's pod CIDRs, or nil when it has none: the only per-pod data the
// cache serves to agents, since the node's pod CIDR entries route the rest.
// An endpoint whose node is unknown (nil) is left out as well: no agent
// could route it (ComputeEntries skips it), and the cache, which computes
// from the remote's full state, adds it once the node appears.
func OutsideNodeCIDRs(e *Endpoint, node *Node) *Endpoint {
	if node == nil {
		return nil
	}
	var out []netip.Addr
	for _, ip := range e.IPs {
		if !AddrWithin(ip, node.PodCIDRs) {
			out = append(out, ip)
		}
	}
	if len(out) == 0 {
		return nil
	}
	if len(out) == len(e.IPs) {
		return e
	}
	r := *e
	r.IPs = out
	return &r
}
