package kubesync

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

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
	ReasonInvalid        = "invalid"
	ReasonUnparsableAddr = "unparsable_address"
)

// Cluster is what every exported value says about its cluster.
type Cluster struct {
	Name     string
	ID       uint32
	PodCIDRs []netip.Prefix
}

// ClusterConfig returns the cluster-config value.
func (c Cluster) ClusterConfig() *meshapi.ClusterConfig {
	return &meshapi.ClusterConfig{
		Name:          c.Name,
		ID:            c.ID,
		PodCIDRs:      slices.Clone(c.PodCIDRs),
		ServiceCIDRs:  []netip.Prefix{},
		Capabilities:  meshapi.Capabilities{Endpoints: true, Services: true},
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

// ServiceFor converts a Service and its EndpointSlices. When the service is
// not exported it returns nil and the reason.
func (c Cluster) ServiceFor(s *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice) (*meshapi.Service, string) {
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, ReasonExternalName
	}
	out := &meshapi.Service{
		Cluster:   c.Name,
		ClusterID: c.ID,
		Namespace: s.Namespace,
		Name:      s.Name,
		Headless:  s.Spec.ClusterIP == corev1.ClusterIPNone,
		Ports:     make([]meshapi.ServicePort, 0, len(s.Spec.Ports)),
		Endpoints: []meshapi.ServiceEndpoint{},
	}
	for _, p := range s.Spec.Ports {
		out.Ports = append(out.Ports, meshapi.ServicePort{Name: p.Name, Port: p.Port, Protocol: string(p.Protocol)})
	}
	byIP := map[netip.Addr]int{}
	for _, es := range endpointSlices {
		for _, ep := range es.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			node, hostname := "", ""
			if ep.NodeName != nil {
				node = *ep.NodeName
			}
			if ep.Hostname != nil {
				hostname = *ep.Hostname
			}
			for _, s := range ep.Addresses {
				ip, err := netip.ParseAddr(s)
				if err != nil {
					continue // FQDN slices carry names, not addresses
				}
				if i, ok := byIP[ip]; ok {
					out.Endpoints[i].Ready = out.Endpoints[i].Ready || ready
					continue
				}
				byIP[ip] = len(out.Endpoints)
				out.Endpoints = append(out.Endpoints, meshapi.ServiceEndpoint{IP: ip, Hostname: hostname, Node: node, Ready: ready})
			}
		}
	}
	slices.SortFunc(out.Endpoints, func(a, b meshapi.ServiceEndpoint) int { return a.IP.Compare(b.IP) })
	if err := out.Validate(); err != nil {
		return nil, ReasonInvalid
	}
	return out, ""
}
