package meshapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Sentinel errors; wrapped errors name the field and value at fault.
var (
	ErrInvalidKey     = errors.New("invalid key")
	ErrMissingField   = errors.New("missing required field")
	ErrTooLarge       = errors.New("value too large")
	ErrInvalidName    = errors.New("invalid name")
	ErrInvalidAddress = errors.New("invalid address")
	ErrInvalidPrefix  = errors.New("invalid prefix")
	ErrOutOfRange     = errors.New("out of the cluster's pod CIDRs")
	ErrMismatch       = errors.New("does not match")
	ErrUnsupported    = errors.New("unsupported")
)

// Encode renders any wire value as JSON.
func Encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil
}

// DecodeClusterConfig parses and checks a cluster-config value on its own.
func DecodeClusterConfig(data []byte) (*ClusterConfig, error) {
	var c ClusterConfig
	if err := decodeStrict(data, &c, "name", "id", "podCIDRs", "formatVersion"); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// DecodeNode parses and checks a node value on its own.
func DecodeNode(data []byte) (*Node, error) {
	var n Node
	if err := decodeStrict(data, &n, "cluster", "clusterID", "name", "internalIPs", "podCIDRs"); err != nil {
		return nil, err
	}
	if err := n.Validate(); err != nil {
		return nil, err
	}
	return &n, nil
}

// DecodeEndpoint parses and checks an endpoint value on its own.
func DecodeEndpoint(data []byte) (*Endpoint, error) {
	var e Endpoint
	if err := decodeStrict(data, &e, "cluster", "clusterID", "namespace", "name", "node", "ips"); err != nil {
		return nil, err
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

// DecodeService parses and checks a service value on its own.
func DecodeService(data []byte) (*Service, error) {
	var s Service
	if err := decodeStrict(data, &s, "cluster", "clusterID", "namespace", "name"); err != nil {
		return nil, err
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// decodeStrict bounds the size, requires the named top-level fields to be
// present and not null, and decodes into v ignoring unknown fields.
func decodeStrict(data []byte, v any, required ...string) error {
	if len(data) > MaxValueSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), MaxValueSize)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return fmt.Errorf("decode JSON: %w", err)
	}
	for _, f := range required {
		raw, ok := fields[f]
		if !ok || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			return fmt.Errorf("%w %q", ErrMissingField, f)
		}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode JSON: %w", err)
	}
	return nil
}

// Validate checks a cluster config on its own: name, ID, format version and
// pod CIDRs that are canonical, not too broad, and do not overlap each other.
func (c *ClusterConfig) Validate() error {
	if err := ValidateClusterName(c.Name); err != nil {
		return fmt.Errorf("cluster config: %w", err)
	}
	if err := ValidateClusterID(c.ID); err != nil {
		return fmt.Errorf("cluster config %q: %w", c.Name, err)
	}
	if c.FormatVersion != FormatVersion {
		return fmt.Errorf("cluster config %q: %w format version %d (this agent understands %d)", c.Name, ErrUnsupported, c.FormatVersion, FormatVersion)
	}
	if err := ValidatePodCIDRs(c.PodCIDRs); err != nil {
		return fmt.Errorf("cluster config %q: pod CIDRs: %w", c.Name, err)
	}
	if err := validatePrefixList(c.ServiceCIDRs, MaxClusterCIDRs); err != nil {
		return fmt.Errorf("cluster config %q: service CIDRs: %w", c.Name, err)
	}
	if !c.Established.IsZero() && c.Established.Year() < 2000 {
		return fmt.Errorf("cluster config %q: %w: established %s", c.Name, ErrOutOfRange, c.Established.Format(time.RFC3339))
	}
	return nil
}

// Validate checks a node value on its own.
func (n *Node) Validate() error {
	if err := ValidateClusterName(n.Cluster); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if err := ValidateClusterID(n.ClusterID); err != nil {
		return fmt.Errorf("node %q: %w", n.Name, err)
	}
	if err := ValidateObjectName(n.Name); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if len(n.InternalIPs) == 0 {
		return fmt.Errorf("node %q: %w %q: no internal IP", n.Name, ErrMissingField, "internalIPs")
	}
	if err := validateAddrList(n.InternalIPs, MaxNodeIPs); err != nil {
		return fmt.Errorf("node %q: internal IPs: %w", n.Name, err)
	}
	if err := validatePrefixList(n.PodCIDRs, MaxNodeCIDRs); err != nil {
		return fmt.Errorf("node %q: pod CIDRs: %w", n.Name, err)
	}
	return nil
}

// Validate checks an endpoint value on its own.
func (e *Endpoint) Validate() error {
	if err := ValidateClusterName(e.Cluster); err != nil {
		return fmt.Errorf("endpoint: %w", err)
	}
	if err := ValidateClusterID(e.ClusterID); err != nil {
		return fmt.Errorf("endpoint %s/%s: %w", e.Namespace, e.Name, err)
	}
	for field, name := range map[string]string{"namespace": e.Namespace, "name": e.Name, "node": e.Node} {
		if err := ValidateObjectName(name); err != nil {
			return fmt.Errorf("endpoint %s/%s: %s: %w", e.Namespace, e.Name, field, err)
		}
	}
	for field, name := range map[string]string{"hostname": e.Hostname, "subdomain": e.Subdomain} {
		if name == "" {
			continue
		}
		if err := ValidateObjectName(name); err != nil {
			return fmt.Errorf("endpoint %s/%s: %s: %w", e.Namespace, e.Name, field, err)
		}
	}
	if len(e.IPs) == 0 {
		return fmt.Errorf("endpoint %s/%s: %w %q: no IP", e.Namespace, e.Name, ErrMissingField, "ips")
	}
	if err := validateAddrList(e.IPs, MaxEndpointIPs); err != nil {
		return fmt.Errorf("endpoint %s/%s: IPs: %w", e.Namespace, e.Name, err)
	}
	return nil
}

// ValidatePodCIDRs checks a cluster's declared pod CIDRs: at least one, at
// most MaxClusterCIDRs, canonical, not broader than /8 (IPv4) or /32 (IPv6),
// no special-purpose range, and no two overlapping.
func ValidatePodCIDRs(cidrs []netip.Prefix) error {
	if len(cidrs) == 0 {
		return fmt.Errorf("%w: none declared", ErrInvalidPrefix)
	}
	if err := validatePrefixList(cidrs, MaxClusterCIDRs); err != nil {
		return err
	}
	for i, p := range cidrs {
		min := MinIPv4PodCIDRBits
		if p.Addr().Is6() {
			min = MinIPv6PodCIDRBits
		}
		if p.Bits() < min {
			return fmt.Errorf("%w: %s is broader than /%d", ErrInvalidPrefix, p, min)
		}
		for _, q := range cidrs[i+1:] {
			if p.Overlaps(q) {
				return fmt.Errorf("%w: %s overlaps %s", ErrInvalidPrefix, p, q)
			}
		}
	}
	return nil
}

func validatePrefixList(ps []netip.Prefix, max int) error {
	if len(ps) > max {
		return fmt.Errorf("%w: %d prefixes, limit %d", ErrTooLarge, len(ps), max)
	}
	for _, p := range ps {
		if err := ValidatePrefix(p); err != nil {
			return err
		}
	}
	return nil
}

func validateAddrList(as []netip.Addr, max int) error {
	if len(as) > max {
		return fmt.Errorf("%w: %d addresses, limit %d", ErrTooLarge, len(as), max)
	}
	for _, a := range as {
		if err := validateAddr(a); err != nil {
			return err
		}
	}
	return nil
}

// ValidatePrefix checks that p is a canonical unicast prefix usable as a route.
func ValidatePrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("%w: %q", ErrInvalidPrefix, p.String())
	}
	if p.Masked() != p {
		return fmt.Errorf("%w: %s is not canonical (want %s)", ErrInvalidPrefix, p, p.Masked())
	}
	if p.Bits() == 0 {
		return fmt.Errorf("%w: %s is a default route", ErrInvalidPrefix, p)
	}
	if err := validateAddr(p.Addr()); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalidPrefix, p, err)
	}
	return nil
}

// validateAddr accepts global or private unicast addresses only.
func validateAddr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%w: empty", ErrInvalidAddress)
	case a.Zone() != "":
		return fmt.Errorf("%w: %s has a zone", ErrInvalidAddress, a)
	case a.Is4In6():
		return fmt.Errorf("%w: %s is IPv4-mapped", ErrInvalidAddress, a)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return fmt.Errorf("%w: %s is not a unicast address", ErrInvalidAddress, a)
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%w: %s is broadcast", ErrInvalidAddress, a)
	}
	return nil
}
