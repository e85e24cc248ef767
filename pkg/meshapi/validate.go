package meshapi

import (
	"fmt"
	"net/netip"
	"regexp"
)

var (
	labelRE     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	subdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// ValidateClusterName checks a cluster name: a DNS label of at most 32
// characters. It is used in keys, file names and certificate CNs.
func ValidateClusterName(name string) error {
	if len(name) == 0 || len(name) > MaxClusterNameLen || !labelRE.MatchString(name) {
		return fmt.Errorf("%w: cluster name %q must match %s and have at most %d characters", ErrInvalidName, name, labelRE, MaxClusterNameLen)
	}
	return nil
}

// ValidateObjectName checks a node, namespace, pod or service name: a DNS
// subdomain (RFC 1123) of at most 253 characters, as Kubernetes allows. Dots
// are allowed because real node names carry them (ip-10-0-0-1.ec2.internal);
// slashes are not, so a name is always exactly one key segment.
func ValidateObjectName(name string) error {
	if len(name) == 0 || len(name) > MaxObjectNameLen || !subdomainRE.MatchString(name) {
		return fmt.Errorf("%w: %q must be a DNS subdomain of at most %d characters", ErrInvalidName, name, MaxObjectNameLen)
	}
	return nil
}

// ValidateClusterID checks that id is in 1..255.
func ValidateClusterID(id uint32) error {
	if id < MinClusterID || id > MaxClusterID {
		return fmt.Errorf("%w: cluster ID %d not in %d..%d", ErrInvalidName, id, MinClusterID, MaxClusterID)
	}
	return nil
}

// ValidateNodeFor checks a decoded node against the key it arrived under and
// the config its cluster declared: names and ID agree, and every pod CIDR lies
// inside the cluster's pod CIDRs.
func ValidateNodeFor(key NodeKeyParts, n *Node, cfg *ClusterConfig) error {
	if err := checkOwner(key.Cluster, n.Cluster, n.ClusterID, cfg); err != nil {
		return fmt.Errorf("node %q: %w", n.Name, err)
	}
	if key.Node != n.Name {
		return fmt.Errorf("node %q: %w: key names node %q", n.Name, ErrMismatch, key.Node)
	}
	for _, p := range n.PodCIDRs {
		if !PrefixWithin(p, cfg.PodCIDRs) {
			return fmt.Errorf("node %q: pod CIDR %s: %w %v", n.Name, p, ErrOutOfRange, cfg.PodCIDRs)
		}
	}
	return nil
}

// ValidateEndpointFor checks a decoded endpoint against its key and the
// cluster's config: names and ID agree, and every IP lies inside the
// cluster's pod CIDRs.
func ValidateEndpointFor(key ObjectKeyParts, e *Endpoint, cfg *ClusterConfig) error {
	if err := checkOwner(key.Cluster, e.Cluster, e.ClusterID, cfg); err != nil {
		return fmt.Errorf("endpoint %s/%s: %w", e.Namespace, e.Name, err)
	}
	if key.Namespace != e.Namespace || key.Name != e.Name {
		return fmt.Errorf("endpoint %s/%s: %w: key names %s/%s", e.Namespace, e.Name, ErrMismatch, key.Namespace, key.Name)
	}
	for _, ip := range e.IPs {
		if !AddrWithin(ip, cfg.PodCIDRs) {
			return fmt.Errorf("endpoint %s/%s: IP %s: %w %v", e.Namespace, e.Name, ip, ErrOutOfRange, cfg.PodCIDRs)
		}
	}
	return nil
}

// ValidateServiceFor checks a decoded service against its key and the
// cluster's config: names and ID agree, and every endpoint IP lies inside the
// cluster's pod CIDRs (the exporter publishes no other endpoint, so one
// outside is a remote claiming addresses that are not its own).
func ValidateServiceFor(key ObjectKeyParts, s *Service, cfg *ClusterConfig) error {
	if err := checkOwner(key.Cluster, s.Cluster, s.ClusterID, cfg); err != nil {
		return fmt.Errorf("service %s/%s: %w", s.Namespace, s.Name, err)
	}
	if key.Namespace != s.Namespace || key.Name != s.Name {
		return fmt.Errorf("service %s/%s: %w: key names %s/%s", s.Namespace, s.Name, ErrMismatch, key.Namespace, key.Name)
	}
	for _, ep := range s.Endpoints {
		if !AddrWithin(ep.IP, cfg.PodCIDRs) {
			return fmt.Errorf("service %s/%s: endpoint %s: %w %v", s.Namespace, s.Name, ep.IP, ErrOutOfRange, cfg.PodCIDRs)
		}
	}
	return nil
}

func checkOwner(keyCluster, valueCluster string, valueID uint32, cfg *ClusterConfig) error {
	if keyCluster != cfg.Name {
		return fmt.Errorf("%w: key cluster %q, config cluster %q", ErrMismatch, keyCluster, cfg.Name)
	}
	if valueCluster != keyCluster {
		return fmt.Errorf("%w: value cluster %q, key cluster %q", ErrMismatch, valueCluster, keyCluster)
	}
	if valueID != cfg.ID {
		return fmt.Errorf("%w: cluster ID %d, declared %d", ErrMismatch, valueID, cfg.ID)
	}
	return nil
}

// PrefixWithin reports whether p lies entirely inside one of outer.
func PrefixWithin(p netip.Prefix, outer []netip.Prefix) bool {
	for _, o := range outer {
		if o.Addr().BitLen() == p.Addr().BitLen() && o.Bits() <= p.Bits() && o.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// AddrWithin reports whether a lies inside one of outer.
func AddrWithin(a netip.Addr, outer []netip.Prefix) bool {
	for _, o := range outer {
		if o.Contains(a) {
			return true
		}
	}
	return false
}

// Overlap returns the first pair of overlapping prefixes in a and b.
func Overlap(a, b []netip.Prefix) (netip.Prefix, netip.Prefix, bool) {
	for _, p := range a {
		for _, q := range b {
			if p.Overlaps(q) {
				return p, q, true
			}
		}
	}
	return netip.Prefix{}, netip.Prefix{}, false
}

// HostPrefix returns the /32 or /128 prefix of a single address.
func HostPrefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}
