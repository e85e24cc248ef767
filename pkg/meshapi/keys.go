package meshapi

import (
	"fmt"
	"strings"
)

// Key prefixes of wire format v1. Every key starts with Root.
const (
	Root = "podmesh/v1/"

	ClusterConfigPrefix = Root + "cluster-config/"
	HeartbeatPrefix     = Root + "heartbeat/"
	SyncedPrefix        = Root + "synced/"
	NodesPrefix         = Root + "nodes/"
	EndpointsPrefix     = Root + "endpoints/"
	ServicesPrefix      = Root + "services/"
)

// Kinds that carry a sync canary (podmesh/v1/synced/<cluster>/<kind>).
const (
	KindNodes     = "nodes"
	KindEndpoints = "endpoints"
	KindServices  = "services"
)

// SyncedKinds lists the kinds whose canaries an agent waits for.
var SyncedKinds = []string{KindNodes, KindEndpoints, KindServices}

// ClusterConfigKey returns podmesh/v1/cluster-config/<cluster>.
func ClusterConfigKey(cluster string) string { return ClusterConfigPrefix + cluster }

// HeartbeatKey returns podmesh/v1/heartbeat/<cluster>.
func HeartbeatKey(cluster string) string { return HeartbeatPrefix + cluster }

// SyncedKey returns podmesh/v1/synced/<cluster>/<kind>.
func SyncedKey(cluster, kind string) string { return SyncedPrefix + cluster + "/" + kind }

// SyncedClusterPrefix returns the prefix of every canary of one cluster.
func SyncedClusterPrefix(cluster string) string { return SyncedPrefix + cluster + "/" }

// NodeKey returns podmesh/v1/nodes/<cluster>/<node>.
func NodeKey(cluster, node string) string { return NodesPrefix + cluster + "/" + node }

// NodesClusterPrefix returns the prefix of every node of one cluster.
func NodesClusterPrefix(cluster string) string { return NodesPrefix + cluster + "/" }

// EndpointKey returns podmesh/v1/endpoints/<cluster>/<namespace>/<pod>.
func EndpointKey(cluster, namespace, pod string) string {
	return EndpointsPrefix + cluster + "/" + namespace + "/" + pod
}

// EndpointsClusterPrefix returns the prefix of every endpoint of one cluster.
func EndpointsClusterPrefix(cluster string) string { return EndpointsPrefix + cluster + "/" }

// ServiceKey returns podmesh/v1/services/<cluster>/<namespace>/<name>.
func ServiceKey(cluster, namespace, name string) string {
	return ServicesPrefix + cluster + "/" + namespace + "/" + name
}

// ServicesClusterPrefix returns the prefix of every service of one cluster.
func ServicesClusterPrefix(cluster string) string { return ServicesPrefix + cluster + "/" }

// NodeKeyParts is what a node key names.
type NodeKeyParts struct{ Cluster, Node string }

// ObjectKeyParts is what an endpoint or service key names.
type ObjectKeyParts struct{ Cluster, Namespace, Name string }

// ParseNodeKey splits podmesh/v1/nodes/<cluster>/<node> and checks both names.
func ParseNodeKey(key string) (NodeKeyParts, error) {
	parts, err := splitKey(key, NodesPrefix, 2)
	if err != nil {
		return NodeKeyParts{}, err
	}
	if err := ValidateClusterName(parts[0]); err != nil {
		return NodeKeyParts{}, fmt.Errorf("key %q: %w", key, err)
	}
	if err := ValidateObjectName(parts[1]); err != nil {
		return NodeKeyParts{}, fmt.Errorf("key %q: node: %w", key, err)
	}
	return NodeKeyParts{Cluster: parts[0], Node: parts[1]}, nil
}

// ParseEndpointKey splits podmesh/v1/endpoints/<cluster>/<namespace>/<pod>.
func ParseEndpointKey(key string) (ObjectKeyParts, error) {
	return parseObjectKey(key, EndpointsPrefix)
}

// ParseServiceKey splits podmesh/v1/services/<cluster>/<namespace>/<name>.
func ParseServiceKey(key string) (ObjectKeyParts, error) {
	return parseObjectKey(key, ServicesPrefix)
}

func parseObjectKey(key, prefix string) (ObjectKeyParts, error) {
	parts, err := splitKey(key, prefix, 3)
	if err != nil {
		return ObjectKeyParts{}, err
	}
	if err := ValidateClusterName(parts[0]); err != nil {
		return ObjectKeyParts{}, fmt.Errorf("key %q: %w", key, err)
	}
	if err := ValidateObjectName(parts[1]); err != nil {
		return ObjectKeyParts{}, fmt.Errorf("key %q: namespace: %w", key, err)
	}
	if err := ValidateObjectName(parts[2]); err != nil {
		return ObjectKeyParts{}, fmt.Errorf("key %q: name: %w", key, err)
	}
	return ObjectKeyParts{Cluster: parts[0], Namespace: parts[1], Name: parts[2]}, nil
}

func splitKey(key, prefix string, n int) ([]string, error) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return nil, fmt.Errorf("key %q: %w: want prefix %q", key, ErrInvalidKey, prefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != n {
		return nil, fmt.Errorf("key %q: %w: want %d segments after %q, got %d", key, ErrInvalidKey, n, prefix, len(parts))
	}
	return parts, nil
}
