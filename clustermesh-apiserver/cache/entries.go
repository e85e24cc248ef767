package cache

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Entries reduces one remote cluster's validated state to the cache keys
// agents read: its cluster config, and its nodes in shards (meshapi.ShardOf),
// each node with those of its pods that have IPs outside the node's pod
// CIDRs, reduced to those IPs. nodes is keyed by node name, endpoints by wire
// key (as pkg/clustermesh holds them).
func Entries(cc *meshapi.ClusterConfig, nodes map[string]*meshapi.Node, endpoints map[string]*meshapi.Endpoint) (map[string][]byte, error) {
	return new(encoder).entries(cc, nodes, endpoints)
}

// encoder computes Entries for one remote cluster again and again, as its
// state changes, re-encoding only what changed since its last call: an
// entry whose node and endpoint are the same objects as last time (the
// session replaces an object when it changes and never modifies one) keeps
// its JSON, and a shard none of whose entries changed keeps its compressed
// value. Under churn a change then costs one entry and one shard, not the
// whole cluster (at 5,000 nodes, 32 shards compressed per change).
type encoder struct {
	mu     sync.Mutex // one call at a time
	cfg    *meshapi.ClusterConfig
	cfgRaw []byte
	memo   map[string]encoded // by wire key
	shards []encodedShard     // by shard index; len is the shard count
}

// encoded is one entry's last encoding and the objects it came from; raw
// is nil for an endpoint with no IP outside its node's pod CIDRs.
type encoded struct {
	node *meshapi.Node
	ep   *meshapi.Endpoint
	raw  json.RawMessage
}

// encodedShard is a shard's last value and how many entries it held.
type encodedShard struct {
	entries int
	value   []byte
}

func (c *encoder) entries(cc *meshapi.ClusterConfig, nodes map[string]*meshapi.Node, endpoints map[string]*meshapi.Endpoint) (map[string][]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	count := meshapi.ShardCount(len(nodes))
	if len(c.shards) != count {
		c.shards = make([]encodedShard, count) // every entry moves: all shards anew
	}
	shards := make([]map[string]json.RawMessage, count)
	for i := range shards {
		shards[i] = make(map[string]json.RawMessage)
	}
	changed := make([]bool, count)
	next := make(map[string]encoded, len(nodes)+len(endpoints))
	put := func(node, key string, e encoded, fresh bool) {
		next[key] = e
		if e.raw == nil {
			return
		}
		i := meshapi.ShardOf(node, count)
		shards[i][key] = e.raw
		changed[i] = changed[i] || fresh
	}
	for name, n := range nodes {
		key := meshapi.NodeKey(cc.Name, name)
		if old, ok := c.memo[key]; ok && old.node == n && old.ep == nil {
			put(name, key, old, false)
			continue
		}
		raw, err := meshapi.Encode(n)
		if err != nil {
			return nil, fmt.Errorf("cache entry %s: %w", key, err)
		}
		put(name, key, encoded{node: n, raw: raw}, true)
	}
	for key, e := range endpoints {
		node := nodes[e.Node]
		if old, ok := c.memo[key]; ok && old.ep == e && old.node == node {
			put(e.Node, key, old, false)
			continue
		}
		enc := encoded{node: node, ep: e}
		if r := meshapi.OutsideNodeCIDRs(e, node); r != nil {
			raw, err := meshapi.Encode(r)
			if err != nil {
				return nil, fmt.Errorf("cache entry %s: %w", key, err)
			}
			enc.raw = raw
		}
		put(e.Node, key, enc, true)
	}
	if c.cfg != cc {
		b, err := meshapi.Encode(cc)
		if err != nil {
			return nil, fmt.Errorf("cache entry of %s's config: %w", cc.Name, err)
		}
		c.cfg, c.cfgRaw = cc, b
	}
	out := make(map[string][]byte, 1+count)
	out[meshapi.CacheClusterConfigPrefix+cc.Name] = c.cfgRaw
	for i, s := range shards {
		// An entry that left a shard, and no other came in, shows only in
		// the count.
		if changed[i] || c.shards[i].value == nil || c.shards[i].entries != len(s) {
			b, err := meshapi.EncodeCacheShard(s)
			if err != nil {
				c.shards = nil // a later call starts over
				return nil, fmt.Errorf("cache shard %d of %s: %w", i, cc.Name, err)
			}
			c.shards[i] = encodedShard{entries: len(s), value: b}
		}
		out[meshapi.CacheShardKey(cc.Name, i, count)] = c.shards[i].value
	}
	c.memo = next
	return out, nil
}
