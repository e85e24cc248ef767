package kubesync

import (
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Reasons an object is not exported.
const (
	ReasonNoInternalIP   = "no_internal_ip"
	ReasonCIDROutside    = "pod_cidr_outside_cluster"
	ReasonHostNetwork    = "host_network"
	ReasonNoIP           = "no_ip"
	ReasonFinished       = "finished"
	ReasonIPOutside      = "ip_outside_cluster"
	ReasonExternalName   = "external_name"
	ReasonNotExported    = "no_service_export"
	ReasonNoService      = "no_service"
	ReasonInvalid        = "invalid"
	ReasonUnparsableAddr = "unparsable_address"
)

// Cluster is what every exported value says about its cluster.
type Cluster struct {
	Name     string
	ID       uint32
	PodCIDRs []netip.Prefix
	// Established is when the cluster first joined the mesh (zero when
	// unknown); agents rank conflicting clusters by it.
	Established time.Time
}

// ClusterConfig returns the cluster-config value.
func (c Cluster) ClusterConfig() *meshapi.ClusterConfig {
	return &meshapi.ClusterConfig{
		Name:          c.Name,
		ID:            c.ID,
		PodCIDRs:      slices.Clone(c.PodCIDRs),
		Established:   c.Established,
		ServiceCIDRs:  []netip.Prefix{},
		Capabilities:  meshapi.Capabilities{Endpoints: true, Services: true, ServiceExports: true},
		FormatVersion: meshapi.FormatVersion,
	}
}

// NodeFor converts a Kubernetes Node. When the node is not exported it
// returns nil and the reason.
func (c Cluster) NodeFor(n *corev1.Node) (*meshapi.Node, string) {
	out := &meshapi.Node{
		Cluster:     c.Name,
		ClusterID:   c.ID,
		Name:        n.Name,
		InternalIPs: []netip.Addr{},
		PodCIDRs:    []netip.Prefix{},
	}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			return nil, ReasonUnparsableAddr
		}
		if !slices.Contains(out.InternalIPs, ip) {
			out.InternalIPs = append(out.InternalIPs, ip)
		}
	}
	if len(out.InternalIPs) == 0 {
		return nil, ReasonNoInternalIP
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, ReasonUnparsableAddr
		}
		if !meshapi.PrefixWithin(p, c.PodCIDRs) {
			return nil, ReasonCIDROutside
		}
		out.PodCIDRs = append(out.PodCIDRs, p)
	}
	if err := out.Validate(); err != nil {
		return nil, ReasonInvalid
	}
	return out, ""
}

// EndpointFor converts a Pod. When the pod is not exported it returns nil
// and the reason.
func (c Cluster) EndpointFor(p *corev1.Pod) (*meshapi.Endpoint, string) {
	if p.Spec.HostNetwork {
		return nil, ReasonHostNetwork
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil, ReasonFinished
	}
	raw := make([]string, 0, len(p.Status.PodIPs))
	for _, ip := range p.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && p.Status.PodIP != "" {
		raw = []string{p.Status.PodIP}
	}
	if len(raw) == 0 {
		return nil, ReasonNoIP
	}
	ips := make([]netip.Addr, 0, len(raw))
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, ReasonUnparsableAddr
		}
		if !meshapi.AddrWithin(ip, c.PodCIDRs) {
			return nil, ReasonIPOutside
		}
		if !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	out := &meshapi.Endpoint{
		Cluster:   c.Name,
		ClusterID: c.ID,
		Namespace: p.Namespace,
		Name:      p.Name,
		Node:      p.Spec.NodeName,
		IPs:       ips,
		Hostname:  p.Spec.Hostname,
		Subdomain: p.Spec.Subdomain,
	}
	if err := out.Validate(); err != nil {
		return nil, ReasonInvalid
	}
	return out, ""
}

// ServiceFor converts an exported Service and its EndpointSlices into a
// format-2 service entry; exportTime is its ServiceExport's creation time.
// When the service cannot be published it returns nil and the reason.
//
// Endpoints are deduplicated by IP across slices (an address in two slices,
// as during a slice migration, is ready, serving or terminating if any slice
// says so) and sorted by IP. Addresses outside the cluster's pod CIDRs (a
// host-network backend, a manually managed slice) are left out: other
// clusters cannot route them, and their importers refuse a service that
// lists one.
func (c Cluster) ServiceFor(exportTime time.Time, s *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice) (*meshapi.Service, string) {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, ReasonExternalName
	}
	headless := s.Spec.ClusterIP == corev1.ClusterIPNone
	out := &meshapi.Service{
		Cluster:         c.Name,
		ClusterID:       c.ID,
		Namespace:       s.Namespace,
		Name:            s.Name,
		Headless:        headless,
		Ports:           make([]meshapi.ServicePort, 0, len(s.Spec.Ports)),
		Endpoints:       []meshapi.ServiceEndpoint{},
		ExportTime:      exportTime.UTC(),
		Type:            meshapi.ServiceTypeClusterSetIP,
		SessionAffinity: string(s.Spec.SessionAffinity),
	}
	if headless {
		out.Type = meshapi.ServiceTypeHeadless
	}
	if cfg := s.Spec.SessionAffinityConfig; s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP && cfg != nil && cfg.ClientIP != nil && cfg.ClientIP.TimeoutSeconds != nil {
		out.SessionAffinityTimeoutSeconds = *cfg.ClientIP.TimeoutSeconds
	}
	for _, f := range s.Spec.IPFamilies {
		out.IPFamilies = append(out.IPFamilies, string(f))
	}
	for _, p := range s.Spec.Ports {
		out.Ports = append(out.Ports, meshapi.ServicePort{Name: p.Name, Port: p.Port, Protocol: string(p.Protocol), AppProtocol: ptr.Deref(p.AppProtocol, ""),
			TargetPort: targetPort(p, endpointSlices)})
	}
	byIP := map[netip.Addr]int{}
	for _, es := range endpointSlices {
		for _, ep := range es.Endpoints {
			v := endpointFor(ep)
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || !meshapi.AddrWithin(ip, c.PodCIDRs) {
					continue // FQDN slices carry names; see above for foreign IPs
				}
				if i, ok := byIP[ip]; ok {
					have := &out.Endpoints[i]
					have.Ready, have.Serving, have.Terminating = have.Ready || v.Ready, have.Serving || v.Serving, have.Terminating || v.Terminating
					continue
				}
				v.IP = ip
				byIP[ip] = len(out.Endpoints)
				out.Endpoints = append(out.Endpoints, v)
			}
		}
	}
	slices.SortFunc(out.Endpoints, func(a, b meshapi.ServiceEndpoint) int { return a.IP.Compare(b.IP) })
	if err := out.Validate(); err != nil {
		return nil, ReasonInvalid
	}
	return out, ""
}

// targetPort is the number the endpoints serve Service port p on: the port
// of the same name and protocol in the first EndpointSlice that lists one
// (the EndpointSlice controller splits slices whose pods resolve a named
// target port differently; a single number per cluster is what an importer
// can program), or 0 when no slice says.
func targetPort(p corev1.ServicePort, endpointSlices []*discoveryv1.EndpointSlice) int32 {
	for _, es := range endpointSlices {
		for _, ep := range es.Ports {
			if ptr.Deref(ep.Name, "") == p.Name && ptr.Deref(ep.Protocol, corev1.ProtocolTCP) == p.Protocol && ep.Port != nil {
				return *ep.Port
			}
		}
	}
	return 0
}

// endpointFor copies one EndpointSlice endpoint's conditions and names, with
// the API's defaults for unset conditions: ready and serving are true when
// unknown (serving defers to ready), terminating is false. Ready is copied
// as is, so a Service with publishNotReadyAddresses (whose slices say ready)
// publishes ready endpoints.
func endpointFor(ep discoveryv1.Endpoint) meshapi.ServiceEndpoint {
	ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
	serving := ready
	if ep.Conditions.Serving != nil {
		serving = *ep.Conditions.Serving
	}
	v := meshapi.ServiceEndpoint{
		Hostname:    ptr.Deref(ep.Hostname, ""),
		Node:        ptr.Deref(ep.NodeName, ""),
		Ready:       ready,
		Serving:     serving,
		Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
		Zone:        ptr.Deref(ep.Zone, ""),
	}
	if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" && (ref.APIVersion == "" || ref.APIVersion == "v1") {
		v.Pod = ref.Name
	}
	return v
}
