package meshapi

import (
	"fmt"
	"regexp"
	"slices"
)

// Values of the service fields that are not free text. They mirror the
// Kubernetes Service API, whose validation the exporting cluster already ran;
// a remote is untrusted, so they are checked again here.
const (
	ProtocolTCP  = "TCP"
	ProtocolUDP  = "UDP"
	ProtocolSCTP = "SCTP"

	SessionAffinityNone     = "None"
	SessionAffinityClientIP = "ClientIP"
	// MaxSessionAffinityTimeoutSeconds is Kubernetes' bound (one day).
	MaxSessionAffinityTimeoutSeconds = 86400

	IPFamilyIPv4 = "IPv4"
	IPFamilyIPv6 = "IPv6"

	maxLabelLen       = 63
	maxAppProtocolLen = MaxObjectNameLen + 1 + maxLabelLen // prefix/name
)

var (
	// labelValueRE is a Kubernetes label value (zones are label values of
	// topology.kubernetes.io/zone).
	labelValueRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`)
	// appProtocolRE is a Kubernetes qualified name: an optional DNS
	// subdomain prefix and a slash, then a name of letters, digits, '-', '_'
	// and '.' (as in "http", "kubernetes.io/h2c").
	appProtocolRE = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
)

// Validate checks a service value on its own: names, sizes, ports, endpoint
// addresses, and the format-2 fields when present. A format-1 value (Type
// empty) is valid without them; a format-2 value (Type set) must carry its
// ExportTime and agree with its own Headless flag.
func (s *Service) Validate() error {
	if err := ValidateClusterName(s.Cluster); err != nil {
		return fmt.Errorf("service: %w", err)
	}
	if err := ValidateClusterID(s.ClusterID); err != nil {
		return fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
	}
	if err := ValidateObjectName(s.Namespace); err != nil {
		return fmt.Errorf("service: namespace: %w", err)
	}
	if err := ValidateObjectName(s.Name); err != nil {
		return fmt.Errorf("service: name: %w", err)
	}
	if err := s.validateFormat2(); err != nil {
		return fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
	}
	if len(s.Ports) > MaxServicePorts {
		return fmt.Errorf("service %s/%s: %w: %d ports, limit %d", s.Namespace, s.Name, ErrTooLarge, len(s.Ports), MaxServicePorts)
	}
	for _, p := range s.Ports {
		if err := p.validate(); err != nil {
			return fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
		}
	}
	if len(s.Endpoints) > MaxServiceEndpoints {
		return fmt.Errorf("service %s/%s: %w: %d endpoints, limit %d", s.Namespace, s.Name, ErrTooLarge, len(s.Endpoints), MaxServiceEndpoints)
	}
	for _, ep := range s.Endpoints {
		if err := ep.validate(); err != nil {
			return fmt.Errorf("service %s/%s: endpoint: %w", s.Namespace, s.Name, err)
		}
	}
	return nil
}

func (s *Service) validateFormat2() error {
	switch s.Type {
	case "":
		// Format 1: the format-2 fields are absent; anything else there is
		// still checked below, so a value cannot smuggle garbage past
		// validation by leaving Type out.
	case ServiceTypeClusterSetIP, ServiceTypeHeadless:
		if s.ExportTime.IsZero() {
			return fmt.Errorf("%w %q: a %s export needs its export time", ErrMissingField, "exportTime", s.Type)
		}
		if s.Headless != (s.Type == ServiceTypeHeadless) {
			return fmt.Errorf("%w: type %s, headless %t", ErrMismatch, s.Type, s.Headless)
		}
	default:
		return fmt.Errorf("%w: type %q (want %s or %s)", ErrUnsupported, s.Type, ServiceTypeClusterSetIP, ServiceTypeHeadless)
	}
	switch s.SessionAffinity {
	case "", SessionAffinityNone:
		if s.SessionAffinityTimeoutSeconds != 0 {
			return fmt.Errorf("%w: session affinity timeout %d without ClientIP affinity", ErrMismatch, s.SessionAffinityTimeoutSeconds)
		}
	case SessionAffinityClientIP:
		if s.SessionAffinityTimeoutSeconds < 0 || s.SessionAffinityTimeoutSeconds > MaxSessionAffinityTimeoutSeconds {
			return fmt.Errorf("%w: session affinity timeout %d not in 0..%d", ErrUnsupported, s.SessionAffinityTimeoutSeconds, MaxSessionAffinityTimeoutSeconds)
		}
	default:
		return fmt.Errorf("%w: session affinity %q (want %s or %s)", ErrUnsupported, s.SessionAffinity, SessionAffinityNone, SessionAffinityClientIP)
	}
	if len(s.IPFamilies) > 2 {
		return fmt.Errorf("%w: %d IP families, limit 2", ErrTooLarge, len(s.IPFamilies))
	}
	for i, f := range s.IPFamilies {
		if f != IPFamilyIPv4 && f != IPFamilyIPv6 {
			return fmt.Errorf("%w: IP family %q (want %s or %s)", ErrUnsupported, f, IPFamilyIPv4, IPFamilyIPv6)
		}
		if slices.Contains(s.IPFamilies[:i], f) {
			return fmt.Errorf("%w: IP family %s listed twice", ErrMismatch, f)
		}
	}
	return nil
}

func (p ServicePort) validate() error {
	if p.Port < 1 || p.Port > 65535 {
		return fmt.Errorf("port %d: %w: not in 1..65535", p.Port, ErrInvalidAddress)
	}
	switch p.Protocol {
	case ProtocolTCP, ProtocolUDP, ProtocolSCTP:
	default:
		return fmt.Errorf("port %d: %w protocol %q (want TCP, UDP or SCTP)", p.Port, ErrUnsupported, p.Protocol)
	}
	if p.Name != "" {
		if err := validateLabel(p.Name); err != nil {
			return fmt.Errorf("port %d: name: %w", p.Port, err)
		}
	}
	if p.TargetPort < 0 || p.TargetPort > 65535 {
		return fmt.Errorf("port %d: %w: target port %d not in 1..65535", p.Port, ErrInvalidAddress, p.TargetPort)
	}
	if p.AppProtocol != "" && (len(p.AppProtocol) > maxAppProtocolLen || !appProtocolRE.MatchString(p.AppProtocol)) {
		return fmt.Errorf("port %d: %w: appProtocol %q is not a qualified name", p.Port, ErrInvalidName, p.AppProtocol)
	}
	return nil
}

func (ep ServiceEndpoint) validate() error {
	if err := validateAddr(ep.IP); err != nil {
		return err
	}
	if ep.Hostname != "" {
		if err := validateLabel(ep.Hostname); err != nil {
			return fmt.Errorf("%s: hostname: %w", ep.IP, err)
		}
	}
	for field, name := range map[string]string{"node": ep.Node, "pod": ep.Pod} {
		if name == "" {
			continue
		}
		if err := ValidateObjectName(name); err != nil {
			return fmt.Errorf("%s: %s: %w", ep.IP, field, err)
		}
	}
	if len(ep.Zone) > maxLabelLen || !labelValueRE.MatchString(ep.Zone) {
		return fmt.Errorf("%s: %w: zone %q is not a label value", ep.IP, ErrInvalidName, ep.Zone)
	}
	return nil
}

// validateLabel checks a DNS label (RFC 1123) of at most 63 characters: a
// port name or an endpoint hostname, which DNS uses as one label.
func validateLabel(name string) error {
	if len(name) == 0 || len(name) > maxLabelLen || !labelRE.MatchString(name) {
		return fmt.Errorf("%w: %q must be a DNS label of at most %d characters", ErrInvalidName, name, maxLabelLen)
	}
	return nil
}
