package cache

import (
	"encoding/json"
	"fmt"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Entries reduces one remote cluster's validated state to the cache keys
// agents read: its cluster config, and its nodes in shards (meshapi.ShardOf),
// each node with those of its pods that have IPs outside the node's pod
// CIDRs, reduced to those IPs. nodes is keyed by node name, endpoints by wire
// key (as pkg/clustermesh holds them).
func Entries(cc *meshapi.ClusterConfig, nodes map[string]*meshapi.Node, endpoints map[string]*meshapi.Endpoint) (map[string][]byte, error) {
	count := meshapi.ShardCount(len(nodes))
	shards := make([]map[string]json.RawMessage, count)
	for i := range shards {
		shards[i] = make(map[string]json.RawMessage)
	}
	add := func(node, wireKey string, v any) error {
		b, err := meshapi.Encode(v)
		if err != nil {
			return fmt.Errorf("cache entry %s: %w", wireKey, err)
		}
		shards[meshapi.ShardOf(node, count)][wireKey] = b
		return nil
	}
	for name, n := range nodes {
		if err := add(name, meshapi.NodeKey(cc.Name, name), n); err != nil {
			return nil, err
		}
	}
	for key, e := range endpoints {
		if r := meshapi.OutsideNodeCIDRs(e, nodes[e.Node]); r != nil {
			if err := add(e.Node, key, r); err != nil {
				return nil, err
			}
		}
	}
	out := make(map[string][]byte, 1+count)
	b, err := meshapi.Encode(cc)
	if err != nil {
		return nil, fmt.Errorf("cache entry of %s's config: %w", cc.Name, err)
	}
	out[meshapi.CacheClusterConfigPrefix+cc.Name] = b
	for i, s := range shards {
		b, err := meshapi.EncodeCacheShard(s)
		if err != nil {
			return nil, fmt.Errorf("cache shard %d of %s: %w", i, cc.Name, err)
		}
		out[meshapi.CacheShardKey(cc.Name, i, count)] = b
	}
	return out, nil
}
