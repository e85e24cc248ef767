package cache

import (
	"fmt"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Entries reduces one remote cluster's validated state to the cache keys
// agents read: its cluster config, every node, and every endpoint that has
// IPs outside its node's pod CIDRs, reduced to those IPs. nodes is keyed by
// node name, endpoints by wire key (as pkg/clustermesh holds them).
func Entries(cc *meshapi.ClusterConfig, nodes map[string]*meshapi.Node, endpoints map[string]*meshapi.Endpoint) (map[string][]byte, error) {
	out := make(map[string][]byte, 1+len(nodes))
	put := func(wireKey string, v any) error {
		key, err := meshapi.WireToCacheKey(wireKey)
		if err != nil {
			return err
		}
		b, err := meshapi.Encode(v)
		if err != nil {
			return fmt.Errorf("cache entry %s: %w", key, err)
		}
		out[key] = b
		return nil
	}
	if err := put(meshapi.ClusterConfigKey(cc.Name), cc); err != nil {
		return nil, err
	}
	for name, n := range nodes {
		if err := put(meshapi.NodeKey(cc.Name, name), n); err != nil {
			return nil, err
		}
	}
	for key, e := range endpoints {
		if r := meshapi.OutsideNodeCIDRs(e, nodes[e.Node]); r != nil {
			if err := put(key, r); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
