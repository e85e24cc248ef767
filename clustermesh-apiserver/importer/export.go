package importer

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Export is one cluster's validated export of one namespace/name: what the
// merge needs. Endpoints that failed validation are not in it.
type Export struct {
	Cluster string
	Key     Key
	Time    time.Time
	Type    string // meshapi.ServiceTypeClusterSetIP or ServiceTypeHeadless
	// Ports are the exported Service ports (TargetPort cleared: it is this
	// cluster's business, not the clusterset's, and never conflicts).
	Ports []meshapi.ServicePort
	// EndpointPorts are the ports of this cluster's imported slices: Ports
	// with each port number replaced by the cluster's target port when it
	// published one, so kube-proxy forwards to what the backends serve.
	EndpointPorts   []meshapi.ServicePort
	SessionAffinity string // "None" or "ClientIP"
	AffinityTimeout int32
	IPFamilies      []string
	Endpoints       []meshapi.ServiceEndpoint
}

// ErrInvalidService is wrapped by every refusal of a whole service entry.
var ErrInvalidService = errors.New("invalid service")

// maxAffinityTimeout is the Service API's bound on the ClientIP timeout.
const maxAffinityTimeout = 86400

// droppedEndpoint says why one endpoint of an otherwise valid service was
// refused.
type droppedEndpoint struct {
	IP     netip.Addr
	Reason string
	Err    error
}

// ExportFrom checks a service entry that arrived under key parts from the
// cluster that declared cfg and converts it. The whole entry is refused when
// its identity (names, cluster, ID), its spec (names, ports, type,
// affinity) or any endpoint address (outside cfg's pod CIDRs: the exporter
// publishes no such endpoint, so the cluster claims addresses that are not
// its own) is wrong; an endpoint that repeats another is dropped and
// reported.
func ExportFrom(parts meshapi.ObjectKeyParts, s *meshapi.Service, cfg *meshapi.ClusterConfig) (*Export, []droppedEndpoint, error) {
	if err := meshapi.ValidateServiceFor(parts, s, cfg); err != nil {
		return nil, nil, err
	}
	id := s.Namespace + "/" + s.Name
	// Kubernetes' own rules for what the importer will create from it.
	if errs := validation.IsDNS1123Label(s.Namespace); len(errs) > 0 {
		return nil, nil, fmt.Errorf("service %s: %w: namespace: %s: %w", id, ErrInvalidService, errs[0], meshapi.ErrInvalidName)
	}
	if errs := validation.IsDNS1035Label(s.Name); len(errs) > 0 {
		return nil, nil, fmt.Errorf("service %s: %w: name: %s: %w", id, ErrInvalidService, errs[0], meshapi.ErrInvalidName)
	}
	e := &Export{
		Cluster:         parts.Cluster,
		Key:             Key{s.Namespace, s.Name},
		Time:            s.ExportTime,
		Type:            s.Type,
		SessionAffinity: s.SessionAffinity,
		AffinityTimeout: s.SessionAffinityTimeoutSeconds,
	}
	switch e.Type {
	case meshapi.ServiceTypeClusterSetIP, meshapi.ServiceTypeHeadless:
	case "":
		e.Type = meshapi.ServiceTypeClusterSetIP
		if s.Headless {
			e.Type = meshapi.ServiceTypeHeadless
		}
	default:
		return nil, nil, fmt.Errorf("service %s: %w: type %q: %w", id, ErrInvalidService, s.Type, meshapi.ErrUnsupported)
	}
	switch e.SessionAffinity {
	case "", "None":
		e.SessionAffinity, e.AffinityTimeout = "None", 0
	case "ClientIP":
		if e.AffinityTimeout < 0 || e.AffinityTimeout > maxAffinityTimeout {
			return nil, nil, fmt.Errorf("service %s: %w: session affinity timeout %d: %w", id, ErrInvalidService, e.AffinityTimeout, meshapi.ErrOutOfRange)
		}
	default:
		return nil, nil, fmt.Errorf("service %s: %w: session affinity %q: %w", id, ErrInvalidService, s.SessionAffinity, meshapi.ErrUnsupported)
	}
	if len(s.IPFamilies) > 2 {
		return nil, nil, fmt.Errorf("service %s: %w: %d IP families: %w", id, ErrInvalidService, len(s.IPFamilies), meshapi.ErrTooLarge)
	}
	for _, f := range s.IPFamilies {
		if f != "IPv4" && f != "IPv6" {
			return nil, nil, fmt.Errorf("service %s: %w: IP family %q: %w", id, ErrInvalidService, f, meshapi.ErrUnsupported)
		}
	}
	e.IPFamilies = slices.Clone(s.IPFamilies)
	ports, err := checkPorts(s.Ports)
	if err != nil {
		return nil, nil, fmt.Errorf("service %s: %w: %w", id, ErrInvalidService, err)
	}
	e.Ports, e.EndpointPorts = splitTargetPorts(ports)

	for _, ep := range s.Endpoints {
		if !meshapi.AddrWithin(ep.IP, cfg.PodCIDRs) {
			return nil, nil, fmt.Errorf("service %s: endpoint %s: %w %v", id, ep.IP, meshapi.ErrOutOfRange, cfg.PodCIDRs)
		}
	}
	var dropped []droppedEndpoint
	seen := make(map[netip.Addr]bool, len(s.Endpoints))
	for _, ep := range s.Endpoints {
		switch {
		case seen[ep.IP]:
			dropped = append(dropped, droppedEndpoint{ep.IP, "duplicate", fmt.Errorf("service %s: endpoint %s listed twice", id, ep.IP)})
			continue
		}
		seen[ep.IP] = true
		e.Endpoints = append(e.Endpoints, sanitizeEndpoint(ep))
	}
	slices.SortFunc(e.Endpoints, func(a, b meshapi.ServiceEndpoint) int { return a.IP.Compare(b.IP) })
	return e, dropped, nil
}

// checkPorts applies the Service API's port rules: valid protocol and port,
// names that are DNS labels, required and unique when there is more than
// one port, appProtocol a qualified name.
func checkPorts(in []meshapi.ServicePort) ([]meshapi.ServicePort, error) {
	out := make([]meshapi.ServicePort, 0, len(in))
	names := make(map[string]bool, len(in))
	for _, p := range in {
		switch p.Protocol {
		case "":
			p.Protocol = "TCP"
		case "TCP", "UDP", "SCTP":
		default:
			return nil, fmt.Errorf("port %d: protocol %q: %w", p.Port, p.Protocol, meshapi.ErrUnsupported)
		}
		if p.Port < 1 || p.Port > 65535 {
			return nil, fmt.Errorf("port %d: %w", p.Port, meshapi.ErrOutOfRange)
		}
		if p.Name == "" && len(in) > 1 {
			return nil, fmt.Errorf("port %d: %w: every port needs a name when there are several", p.Port, meshapi.ErrMissingField)
		}
		if p.Name != "" {
			if errs := validation.IsDNS1123Label(p.Name); len(errs) > 0 {
				return nil, fmt.Errorf("port name %q: %s: %w", p.Name, errs[0], meshapi.ErrInvalidName)
			}
			if names[p.Name] {
				return nil, fmt.Errorf("port name %q used twice: %w", p.Name, meshapi.ErrInvalidName)
			}
			names[p.Name] = true
		}
		if p.TargetPort < 0 || p.TargetPort > 65535 {
			return nil, fmt.Errorf("port %d: target port %d: %w", p.Port, p.TargetPort, meshapi.ErrOutOfRange)
		}
		if p.AppProtocol != "" {
			if errs := validation.IsQualifiedName(p.AppProtocol); len(errs) > 0 {
				return nil, fmt.Errorf("port %q: appProtocol %q: %s: %w", p.Name, p.AppProtocol, errs[0], meshapi.ErrInvalidName)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// splitTargetPorts returns the service ports without target ports, and the
// ports the cluster's endpoints serve them on.
func splitTargetPorts(in []meshapi.ServicePort) (service, endpoint []meshapi.ServicePort) {
	service = make([]meshapi.ServicePort, 0, len(in))
	endpoint = make([]meshapi.ServicePort, 0, len(in))
	for _, p := range in {
		ep := p
		if p.TargetPort > 0 {
			ep.Port = p.TargetPort
		}
		p.TargetPort, ep.TargetPort = 0, 0
		service = append(service, p)
		endpoint = append(endpoint, ep)
	}
	return service, endpoint
}

// sanitizeEndpoint clears fields an EndpointSlice would refuse instead of
// refusing the endpoint: a bad hostname, pod, node or zone costs the remote
// its DNS name, not its traffic.
func sanitizeEndpoint(ep meshapi.ServiceEndpoint) meshapi.ServiceEndpoint {
	if ep.Hostname != "" && len(validation.IsDNS1123Label(ep.Hostname)) > 0 {
		ep.Hostname = ""
	}
	if ep.Pod != "" && len(validation.IsDNS1123Subdomain(ep.Pod)) > 0 {
		ep.Pod = ""
	}
	if ep.Node != "" && len(validation.IsDNS1123Subdomain(ep.Node)) > 0 {
		ep.Node = ""
	}
	if ep.Zone != "" && len(validation.IsValidLabelValue(ep.Zone)) > 0 {
		ep.Zone = ""
	}
	return ep
}

// dnsHostname is the endpoint's name under
// <hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local: its hostname, else
// the pod's name when that is a DNS label (KEP-1645), else none.
func dnsHostname(ep meshapi.ServiceEndpoint) string {
	if ep.Hostname != "" {
		return ep.Hostname
	}
	if ep.Pod != "" && len(validation.IsDNS1123Label(ep.Pod)) == 0 {
		return ep.Pod
	}
	return ""
}
