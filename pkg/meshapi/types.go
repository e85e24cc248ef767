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
	// Established is when the cluster first joined the mesh, written once
	// by its clustermesh-apiserver and kept across restarts (optional; zero
	// when an older apiserver wrote the config). Agents rank conflicting
	// clusters by it, so a newcomer never displaces a cluster that was there
	// first; it is compared, never checked against the local clock.
	Established time.Time `json:"established,omitzero"`
}

// Capabilities says which optional parts of the format a cluster publishes.
type Capabilities struct {
	// Endpoints is true when per-pod endpoint entries are published.
	Endpoints bool `json:"endpoints"`
	// Services is true when service entries are published.
	Services bool `json:"services"`
	// ServiceExports is true when service entries follow ServicesFormat 2:
	// only exported Services are published. A cluster without it publishes
	// format-1 entries, which an importer must not treat as exports.
	ServiceExports bool `json:"serviceExports,omitempty"`
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
//
// Since ServicesFormat 2 (capability "serviceExports" in the cluster config) a
// cluster publishes a Service only while a ServiceExport of the same
// namespace/name exists, and the value carries what the Multi-Cluster Services
// API needs to merge exports across clusters (KEP-1645). The fields added in
// format 2 are optional on the wire, so a format-1 reader ignores them and a
// format-2 reader decodes a format-1 value with them zero; a consumer tells the
// two apart by the publishing cluster's capabilities, never by guessing.
type Service struct {
	Cluster   string            `json:"cluster"`
	ClusterID uint32            `json:"clusterID"`
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Headless  bool              `json:"headless"`
	Ports     []ServicePort     `json:"ports"`
	Endpoints []ServiceEndpoint `json:"endpoints"`

	// ExportTime is the ServiceExport's creation time: the oldest export of a
	// namespace/name in the clusterset wins conflicts. Format 2.
	ExportTime time.Time `json:"exportTime,omitzero"`
	// Type is ServiceTypeClusterSetIP or ServiceTypeHeadless. Format 2.
	Type string `json:"type,omitempty"`
	// SessionAffinity is "None" or "ClientIP", as in the Service. Format 2.
	SessionAffinity string `json:"sessionAffinity,omitempty"`
	// SessionAffinityTimeoutSeconds is the ClientIP affinity timeout, 0 when
	// unset. Format 2.
	SessionAffinityTimeoutSeconds int32 `json:"sessionAffinityTimeoutSeconds,omitempty"`
	// IPFamilies lists "IPv4"/"IPv6" as in the Service's spec. Format 2.
	IPFamilies []string `json:"ipFamilies,omitempty"`
}

// Service types of the Multi-Cluster Services API (ServiceImport spec.type).
const (
	ServiceTypeClusterSetIP = "ClusterSetIP"
	ServiceTypeHeadless     = "Headless"
)

// ServicesFormat is the version of the service entries this package writes:
// 1 published every Service with ports and ready endpoints; 2 publishes only
// exported Services, with the format-2 fields of Service, ServicePort and
// ServiceEndpoint.
const ServicesFormat = 2

// ServicePort is one port of a Service.
type ServicePort struct {
	Name     string `json:"name"`
	Port     int32  `json:"port"`
	Protocol string `json:"protocol"`
	// AppProtocol is the port's appProtocol, empty when unset. Format 2.
	AppProtocol string `json:"appProtocol,omitempty"`
	// TargetPort is the port number the exporting cluster's endpoints serve
	// this port on, from its EndpointSlices' port of the same name; 0 when
	// unknown (no endpoints yet), which an importer reads as Port. Importing
	// clusters program it into their EndpointSlices so that kube-proxy
	// forwards a ClusterSetIP port to the right backend port. Format 2.
	TargetPort int32 `json:"targetPort,omitempty"`
}

// ServiceEndpoint is one backend address of a Service, from an EndpointSlice.
type ServiceEndpoint struct {
	IP       netip.Addr `json:"ip"`
	Hostname string     `json:"hostname"`
	Node     string     `json:"node"`
	// Ready is the EndpointSlice's ready condition, copied as is (so a
	// Service with publishNotReadyAddresses publishes ready=true).
	Ready bool `json:"ready"`
	// Serving and Terminating are the EndpointSlice's conditions. Format 2.
	Serving     bool `json:"serving,omitempty"`
	Terminating bool `json:"terminating,omitempty"`
	// Zone is the endpoint's zone, empty when unset. Format 2.
	Zone string `json:"zone,omitempty"`
	// Pod names the backing pod (targetRef) when the endpoint has one; the
	// importer uses it as the DNS hostname of a headless endpoint without a
	// hostname, as KEP-1645 asks. Format 2.
	Pod string `json:"pod,omitempty"`
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
