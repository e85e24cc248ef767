package meshapi

import (
	"net/netip"
	"time"
)

// FormatVersion is the wire format version this package writes and reads.
const FormatVersion = 1

// Bounds on what a remote may send. An entry over any of them is invalid.
const (
	MaxValueSize          = 256 << 10 // bytes of one JSON value
	MaxClusterNameLen     = 32
	MaxObjectNameLen      = 253
	MaxClusterCIDRs       = 16 // pod or service CIDRs declared by one cluster
	MaxNodeCIDRs          = 8
	MaxNodeIPs            = 8
	MaxEndpointIPs        = 8
	MaxServicePorts       = 128
	MaxServiceEndpoints   = 4096
	MinClusterID          = 1
	MaxClusterID          = 255
	MinIPv4PodCIDRBits    = 8  // a pod CIDR broader than /8 is refused
	MinIPv6PodCIDRBits    = 32 // a pod CIDR broader than /32 is refused
	HeartbeatInterval     = 10 * time.Second
	HeartbeatStaleAfter   = 30 * time.Second
	DefaultTunnelUDPPort  = 8472
	VXLANOverheadIPv4     = 50
	VXLANOverheadIPv6     = 70
	DefaultUnderlayMTU    = 1500
	maxCapabilityNameSize = 64
)

// ClusterConfig is the value at podmesh/v1/cluster-config/<cluster>: what a
// cluster declares about itself. Every other entry of that cluster is checked
// against it.
type ClusterConfig struct {
	Name          string         `json:"name"`
	ID            uint32         `json:"id"`
	PodCIDRs      []netip.Prefix `json:"podCIDRs"`
	ServiceCIDRs  []netip.Prefix `json:"serviceCIDRs"`
	Capabilities  Capabilities   `json:"capabilities"`
	FormatVersion int            `json:"formatVersion"`
}

// Capabilities says which optional parts of the format a cluster publishes.
type Capabilities struct {
	// Endpoints is true when per-pod endpoint entries are published.
	Endpoints bool `json:"endpoints"`
	// Services is true when service entries are published.
	Services bool `json:"services"`
}

// Node is the value at podmesh/v1/nodes/<cluster>/<node>.
type Node struct {
	Cluster     string         `json:"cluster"`
	ClusterID   uint32         `json:"clusterID"`
	Name        string         `json:"name"`
	InternalIPs []netip.Addr   `json:"internalIPs"`
	PodCIDRs    []netip.Prefix `json:"podCIDRs"`
}

// Endpoint is the value at podmesh/v1/endpoints/<cluster>/<namespace>/<pod>.
type Endpoint struct {
	Cluster   string       `json:"cluster"`
	ClusterID uint32       `json:"clusterID"`
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	Node      string       `json:"node"`
	IPs       []netip.Addr `json:"ips"`
	Hostname  string       `json:"hostname"`
	Subdomain string       `json:"subdomain"`
}

// Service is the value at podmesh/v1/services/<cluster>/<namespace>/<name>.
type Service struct {
	Cluster   string            `json:"cluster"`
	ClusterID uint32            `json:"clusterID"`
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Headless  bool              `json:"headless"`
	Ports     []ServicePort     `json:"ports"`
	Endpoints []ServiceEndpoint `json:"endpoints"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name     string `json:"name"`
	Port     int32  `json:"port"`
	Protocol string `json:"protocol"`
}

// ServiceEndpoint is one backend of a Service.
type ServiceEndpoint struct {
	IP       netip.Addr `json:"ip"`
	Hostname string     `json:"hostname"`
	Node     string     `json:"node"`
	Ready    bool       `json:"ready"`
}

// FormatTime renders a heartbeat or canary value (RFC 3339, UTC).
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ParseTime parses a heartbeat or canary value.
func ParseTime(v []byte) (time.Time, error) {
	if len(v) > 64 {
		return time.Time{}, ErrTooLarge
	}
	return time.Parse(time.RFC3339Nano, string(v))
}
