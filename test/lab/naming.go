package lab

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
)

// Limits of the addressing plan: cluster i uses 10.i.0.0/16 for pods and
// 192.168.i.0/24 on the underlay; node j of it is 192.168.i.(10+j) with pod
// CIDR 10.i.j.0/24 (a pool node's pods come from 10.i.(100+j).0/24); MaxPods
// bounds the echo pods per node.
const (
	MaxClusters = 200
	MaxNodes    = 100
	MaxPods     = 100
)

// DefaultPrefix is the lab prefix of the CLI when none is given.
const DefaultPrefix = "podmesh-lab"

// DefaultStateRoot holds one state directory per lab prefix.
const DefaultStateRoot = "/run/podmesh-lab"

// NetNSDir is where `ip netns` keeps its named namespaces.
const NetNSDir = "/var/run/netns"

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)

// ValidatePrefix checks a lab prefix. The prefix starts every name the lab
// creates, so it must be short enough for netns and bpffs names and must not
// look like a role suffix itself.
func ValidatePrefix(p string) error {
	if len(p) < 3 || len(p) > 24 || !prefixRE.MatchString(p) {
		return fmt.Errorf("lab prefix %q: want 3-24 characters of [a-z0-9-], starting with a letter", p)
	}
	return nil
}

// Names derives every name of one lab from its prefix. A name is the prefix,
// a dash and a role; the roles form a closed grammar (see ownedRE), so that
// discovery by prefix matches exactly this lab's objects and never those of a
// lab whose prefix merely starts with ours.
type Names struct{ Prefix string }

// ownedRE matches the role part of every netns and bpffs name a lab creates.
var ownedRE = regexp.MustCompile(`^(ul|c[0-9]+-cp|c[0-9]+-n[0-9]+)$`)

// Owns reports whether name (a netns or bpffs directory name) belongs to the
// lab with this prefix.
func (n Names) Owns(name string) bool {
	role, ok := cutPrefixDash(name, n.Prefix)
	return ok && ownedRE.MatchString(role)
}

func cutPrefixDash(name, prefix string) (string, bool) {
	if len(name) <= len(prefix)+1 || name[:len(prefix)] != prefix || name[len(prefix)] != '-' {
		return "", false
	}
	return name[len(prefix)+1:], true
}

// Underlay is the namespace holding the underlay bridge.
func (n Names) Underlay() string { return n.Prefix + "-ul" }

// ControlPlane is the namespace of cluster i's control plane.
func (n Names) ControlPlane(i int) string { return n.Prefix + "-c" + strconv.Itoa(i) + "-cp" }

// Node is the namespace of node j of cluster i.
func (n Names) Node(i, j int) string { return fmt.Sprintf("%s-c%d-n%d", n.Prefix, i, j) }

// NetNSPath returns the bind-mount path of a named namespace; an absolute
// path (a pod's /proc/<pid>/ns/net) is returned as it is.
func NetNSPath(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(NetNSDir, name)
}

// ClusterName is the podmesh cluster name of cluster i.
func ClusterName(i int) string { return "c" + strconv.Itoa(i) }

// NodeName is the Kubernetes node name of node j of cluster i.
func NodeName(i, j int) string { return fmt.Sprintf("c%d-n%d", i, j) }

// ClusterPodCIDR is the pod range cluster i declares.
func ClusterPodCIDR(i int) netip.Prefix { return netip.PrefixFrom(ip4(10, i, 0, 0), 16) }

// NodePodCIDR is node j's pod CIDR in cluster i.
func NodePodCIDR(i, j int) netip.Prefix { return netip.PrefixFrom(ip4(10, i, j, 0), 24) }

// PodPoolCIDR is the pool a pool node's CNI allocates pod addresses from
// (Options.PoolNodes): inside cluster i's pod range, outside every node's
// pod CIDR.
func PodPoolCIDR(i, j int) netip.Prefix { return netip.PrefixFrom(ip4(10, i, 100+j, 0), 24) }

// ClusterPodCIDR6 is cluster i's IPv6 pod range (dual-stack labs):
// fd00:10:i::/48.
func ClusterPodCIDR6(i int) netip.Prefix { return netip.PrefixFrom(ip6(i, 0), 48) }

// NodePodCIDR6 is node j's IPv6 pod CIDR: fd00:10:i:j::/64.
func NodePodCIDR6(i, j int) netip.Prefix { return netip.PrefixFrom(ip6(i, j), 64) }

func ip6(i, j int) netip.Addr {
	var b [16]byte
	b[0], b[1], b[3] = 0xfd, 0x00, 0x10
	b[4], b[5] = byte(i>>8), byte(i)
	b[6], b[7] = byte(j>>8), byte(j)
	return netip.AddrFrom16(b)
}

// ControlPlaneIP is cluster i's control-plane address on the underlay.
func ControlPlaneIP(i int) netip.Addr { return ip4(192, 168, i, 1) }

// NodeIP is node j's underlay address (its Kubernetes InternalIP).
func NodeIP(i, j int) netip.Addr { return ip4(192, 168, i, 10+j) }

// UnderlayBits is the prefix length of the underlay: one L2 segment.
const UnderlayBits = 16

func ip4(a, b, c, d int) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(a), byte(b), byte(c), byte(d)})
}

// mac returns a locally administered unicast MAC derived from the parts.
func mac(kind byte, i, j int) string {
	return fmt.Sprintf("02:%02x:%02x:%02x:00:00", kind, byte(i), byte(j))
}
