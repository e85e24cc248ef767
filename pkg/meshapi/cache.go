package meshapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// The cache tier's key layout (cache format v1). A clustermesh-apiserver that
// caches its remotes mirrors what it validated into its own etcd under
// CacheRoot and serves that to its own cluster's agents only.
//
// CacheRoot deliberately does not start with Root ("podmesh/"): the etcd role
// a peer's proxy reads with covers Root's range only, and "podmesh-cache/"
// sorts outside it, so no peer can ever read what this cluster caches of a
// third cluster. The cache carries two versions of its own: "v1" in
// CacheRoot versions the key layout below, and CacheFormat versions the
// values (every status and shard carries it); a reader refuses a value of a
// format it does not know, with an error naming both, rather than misread
// it. A change of the key layout changes CacheRoot's version, so agents of
// an older layout find nothing.
//
// Below CacheRoot the keys repeat the wire keys of Root without Root:
//
//	podmesh-cache/v1/epoch                          random, once per etcd data directory
//	podmesh-cache/v1/synced                         RFC 3339 time: every configured remote
//	                                                synced once (or the sync timeout passed)
//	podmesh-cache/v1/cluster-config/<cluster>       the remote's ClusterConfig, as admitted
//	podmesh-cache/v1/status/<cluster>               CacheStatus: freshness of the remote
//	podmesh-cache/v1/shards/<cluster>/<i>-of-<n>    CacheShard: the nodes whose name hashes
//	                                                to shard i of n (ShardOf), as the remote
//	                                                published them, and their pods' Endpoints
//	                                                reduced to the IPs outside the node's pod
//	                                                CIDRs (absent when none)
//
// A shard carries its entries under their wire keys, with the values as the
// remote wrote them (or reduced), so an agent validates a cached entry with
// exactly the checks of direct mode. Shards exist because an agent's
// bootstrap costs per key far more than per byte: a few hundred nodes per
// value make a listing of 250 clusters a few hundred keys instead of tens of
// thousands. A node and its pods share a shard, so a node's change and the
// pods it covers arrive in one value.
//
// A shard's value (cache format 2) is one byte, the cache format, followed
// by a zstd frame of the shard's JSON (CacheShard, which repeats the
// format). Compressed, the JSON of a few hundred nodes is 5-20 times
// smaller, and the bytes are the cost when every agent of a cluster
// restarts at once: each agent reads every shard, and each byte is copied
// by etcd, the cache proxy and TLS on the way. The leading byte lets a
// reader refuse a format it does not know before it decompresses anything.
// Format 1 was the uncompressed JSON; no release shipped cache mode with
// it, so no reader of format 1 exists, and this one refuses it.
const (
	CacheRoot                = "podmesh-cache/v1/"
	CacheClusterConfigPrefix = CacheRoot + "cluster-config/"
	CacheStatusPrefix        = CacheRoot + "status/"
	CacheShardsPrefix        = CacheRoot + "shards/"
	// CacheEpochKey names the etcd a replica serves: revisions of one
	// replica mean nothing to another, so an agent resumes a watch only
	// while the epoch it listed is the one it reads.
	CacheEpochKey = CacheRoot + "epoch"
	// CacheSyncedKey is the cache's canary: before it exists the cache may
	// still be filling, and an agent withdraws nothing for what is absent.
	CacheSyncedKey = CacheRoot + "synced"
	// CacheFormat is the version of the cache's values: CacheStatus and
	// CacheShard (2: shards compressed; 1 was uncompressed JSON).
	CacheFormat = 2
	// NodesPerShard is what ShardCount aims at per shard.
	NodesPerShard = 256
	// MaxCacheShardSize bounds one shard's JSON, decompressed, and so its
	// stored value as well (etcd refuses requests over 1.5 MiB by default):
	// a small compressed value never expands beyond it in a reader.
	MaxCacheShardSize = 1 << 20
	// MaxCacheShardEntries bounds the entries of one shard.
	MaxCacheShardEntries = 16384
)

// CacheShard is the value at podmesh-cache/v1/shards/<cluster>/<i>-of-<n>:
// wire key -> wire value, for nodes and endpoints of one cluster.
type CacheShard struct {
	Entries map[string]json.RawMessage `json:"entries"`
	Format  int                        `json:"format"`
}

// The shard codec: zstd, whose decoder is bounded to MaxCacheShardSize of
// output. Both are safe for concurrent EncodeAll/DecodeAll calls and built
// once (their options are constant, so they cannot fail but in a bug).
var (
	shardEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
		return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	})
	shardDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
		return zstd.NewReader(nil, zstd.WithDecoderMaxMemory(MaxCacheShardSize), zstd.WithDecoderConcurrency(0))
	})
)

// EncodeCacheShard encodes the entries (wire key -> wire value) of one shard
// in the cache format; ErrTooLarge when they exceed what DecodeCacheShard
// accepts.
func EncodeCacheShard(entries map[string]json.RawMessage) ([]byte, error) {
	if len(entries) > MaxCacheShardEntries {
		return nil, fmt.Errorf("encode cache shard: %w: %d entries, limit %d", ErrTooLarge, len(entries), MaxCacheShardEntries)
	}
	b, err := Encode(CacheShard{Entries: entries, Format: CacheFormat})
	if err != nil {
		return nil, err
	}
	if len(b) > MaxCacheShardSize {
		return nil, fmt.Errorf("encode cache shard: %w: %d bytes of JSON, limit %d", ErrTooLarge, len(b), MaxCacheShardSize)
	}
	enc, err := shardEncoder()
	if err != nil {
		return nil, fmt.Errorf("encode cache shard: %w", err)
	}
	return enc.EncodeAll(b, []byte{CacheFormat}), nil
}

// DecodeCacheShard decodes and bounds a shard (its stored and its
// decompressed size, its entry count) and refuses another cache format; its
// entries are checked one by one by the reader, as if read from the remote
// itself.
func DecodeCacheShard(data []byte) (*CacheShard, error) {
	if len(data) > MaxCacheShardSize {
		return nil, fmt.Errorf("%w: shard of %d bytes, limit %d", ErrTooLarge, len(data), MaxCacheShardSize)
	}
	switch {
	case len(data) == 0:
		return nil, errors.New("decode cache shard: empty value")
	case data[0] == '{':
		return nil, fmt.Errorf("%w: cache format 1 (an uncompressed JSON shard), want %d", ErrUnsupported, CacheFormat)
	case data[0] != CacheFormat:
		return nil, fmt.Errorf("%w: cache format %d, want %d", ErrUnsupported, data[0], CacheFormat)
	}
	dec, err := shardDecoder()
	if err != nil {
		return nil, fmt.Errorf("decode cache shard: %w", err)
	}
	b, err := dec.DecodeAll(data[1:], nil)
	if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
		return nil, fmt.Errorf("%w: shard decompresses to more than %d bytes (%w)", ErrTooLarge, MaxCacheShardSize, err)
	}
	if err != nil {
		return nil, fmt.Errorf("decompress cache shard: %w", err)
	}
	var s CacheShard
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	if s.Format != CacheFormat {
		return nil, fmt.Errorf("%w: cache format %d in a shard of format %d", ErrUnsupported, s.Format, CacheFormat)
	}
	if len(s.Entries) > MaxCacheShardEntries {
		return nil, fmt.Errorf("%w: %d entries in a shard, limit %d", ErrTooLarge, len(s.Entries), MaxCacheShardEntries)
	}
	return &s, nil
}

// ShardCount is the number of shards for a cluster of n nodes: a power of
// two, about NodesPerShard nodes each.
func ShardCount(nodes int) int {
	n := 1
	for n*NodesPerShard < nodes {
		n *= 2
	}
	return n
}

// ShardOf is the shard of a node (and its pods) among count.
func ShardOf(node string, count int) int {
	h := fnv.New32a()
	h.Write([]byte(node))
	return int(h.Sum32() % uint32(count))
}

// CacheShardKey returns podmesh-cache/v1/shards/<cluster>/<i>-of-<n>.
func CacheShardKey(cluster string, i, n int) string {
	return fmt.Sprintf("%s%s/%d-of-%d", CacheShardsPrefix, cluster, i, n)
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
