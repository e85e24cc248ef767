package bpf

import (
	"errors"
	"fmt"
	"net/netip"
)

// MaxClusterID is the largest cluster ID the datapath accepts, both as a
// remote cluster in an Entry and as Options.LocalClusterID. Cluster IDs start
// at 1; the counters map has one slot per ID.
const MaxClusterID = 255

// Address families as the program stores them in keys and values. They
// mirror enum podmesh_family in podmesh.c (deliberately not AF_INET/AF_INET6,
// so a zeroed key or value never decodes as valid).
const (
	familyIPv4 = 4
	familyIPv6 = 6
)

// keyPrefixBits is the part of every ipcache key before the address: the
// family byte and three bytes of padding, always matched in full, so IPv4 and
// IPv6 prefixes never match each other.
const keyPrefixBits = 32

var (
	// ErrInvalidEntry is returned (wrapped) by Sync and Apply for an entry
	// that cannot be programmed: an invalid prefix or tunnel endpoint, or a
	// cluster ID outside 1..MaxClusterID; and by Apply for an invalid prefix
	// to delete.
	ErrInvalidEntry = errors.New("invalid ipcache entry")
	// ErrConflictingEntries is returned (wrapped) by Sync and Apply when one
	// prefix appears twice with different values, and by Apply when one
	// prefix is both upserted and deleted.
	ErrConflictingEntries = errors.New("conflicting entries for one prefix")
	// errUndecodable marks a map entry written by something other than this
	// version of the encoder (a garbled or foreign entry).
	errUndecodable = errors.New("undecodable ipcache entry")
)

// Entry is one ipcache entry: traffic to Prefix is tunnelled to
// TunnelEndpoint, the node of remote cluster ClusterID. Flags are stored
// with the entry for the agent's use; the program does not interpret them.
type Entry struct {
	Prefix         netip.Prefix
	TunnelEndpoint netip.Addr
	ClusterID      uint32
	Flags          uint32
}

func (e Entry) String() string {
	return fmt.Sprintf("%s via %s (cluster %d, flags %#x)", e.Prefix, e.TunnelEndpoint, e.ClusterID, e.Flags)
}

// normalize returns e in the form Entries reports it: an IPv4-mapped IPv6
// prefix or endpoint becomes plain IPv4, and the prefix is masked.
func (e Entry) normalize() (Entry, error) {
	p, err := normalizePrefix(e.Prefix)
	if err != nil {
		return Entry{}, err
	}
	if !e.TunnelEndpoint.IsValid() || e.TunnelEndpoint.IsUnspecified() {
		return Entry{}, fmt.Errorf("%w: prefix %s: tunnel endpoint %q", ErrInvalidEntry, e.Prefix, e.TunnelEndpoint)
	}
	if e.ClusterID == 0 || e.ClusterID > MaxClusterID {
		return Entry{}, fmt.Errorf("%w: prefix %s: cluster ID %d not in 1..%d", ErrInvalidEntry, e.Prefix, e.ClusterID, MaxClusterID)
	}
	e.Prefix = p
	e.TunnelEndpoint = e.TunnelEndpoint.Unmap().WithZone("")
	return e, nil
}

// normalizePrefix returns p as the ipcache keys it: an IPv4-mapped IPv6
// prefix becomes plain IPv4, and host bits are masked.
func normalizePrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%w: prefix %q", ErrInvalidEntry, p)
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("%w: IPv4-mapped prefix %s shorter than /96", ErrInvalidEntry, p)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// encodeKey converts a (valid, normalized) prefix to its ipcache key.
func encodeKey(p netip.Prefix) podmeshIpcacheKey {
	k := podmeshIpcacheKey{Prefixlen: uint32(keyPrefixBits + p.Bits())}
	a := p.Addr()
	if a.Is4() {
		k.Family = familyIPv4
		v4 := a.As4()
		copy(k.Addr[:], v4[:])
	} else {
		k.Family = familyIPv6
		k.Addr = a.As16()
	}
	return k
}

// decodeKey converts an ipcache key back to its prefix. It refuses keys that
// encodeKey cannot have produced, so foreign or garbled entries are noticed.
func decodeKey(k podmeshIpcacheKey) (netip.Prefix, error) {
	if k.Pad != [3]uint8{} || k.Prefixlen < keyPrefixBits {
		return netip.Prefix{}, fmt.Errorf("%w: key %+v", errUndecodable, k)
	}
	bits := int(k.Prefixlen - keyPrefixBits)
	var p netip.Prefix
	switch k.Family {
	case familyIPv4:
		if bits > 32 || [12]uint8(k.Addr[4:]) != [12]uint8{} {
			return netip.Prefix{}, fmt.Errorf("%w: key %+v", errUndecodable, k)
		}
		p = netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits)
	case familyIPv6:
		if bits > 128 {
			return netip.Prefix{}, fmt.Errorf("%w: key %+v", errUndecodable, k)
		}
		p = netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits)
	default:
		return netip.Prefix{}, fmt.Errorf("%w: key family %d", errUndecodable, k.Family)
	}
	// The trie ignores bits past prefixlen; a key with such bits set still
	// names the masked prefix.
	return p.Masked(), nil
}

// encodeValue converts a (valid, normalized) entry to its ipcache value.
func encodeValue(e Entry) podmeshIpcacheValue {
	v := podmeshIpcacheValue{ClusterId: e.ClusterID, Flags: e.Flags}
	if e.TunnelEndpoint.Is4() {
		v.EndpointFamily = familyIPv4
		v4 := e.TunnelEndpoint.As4()
		copy(v.Endpoint[:], v4[:])
	} else {
		v.EndpointFamily = familyIPv6
		v.Endpoint = e.TunnelEndpoint.As16()
	}
	return v
}

// decodeEntry converts one ipcache key and value back to an Entry.
func decodeEntry(k podmeshIpcacheKey, v podmeshIpcacheValue) (Entry, error) {
	p, err := decodeKey(k)
	if err != nil {
		return Entry{}, err
	}
	if v.Pad != [3]uint8{} {
		return Entry{}, fmt.Errorf("%w: prefix %s: value padding %v", errUndecodable, p, v.Pad)
	}
	var ep netip.Addr
	switch v.EndpointFamily {
	case familyIPv4:
		if [12]uint8(v.Endpoint[4:]) != [12]uint8{} {
			return Entry{}, fmt.Errorf("%w: prefix %s: endpoint %v", errUndecodable, p, v.Endpoint)
		}
		ep = netip.AddrFrom4([4]byte(v.Endpoint[:4]))
	case familyIPv6:
		ep = netip.AddrFrom16(v.Endpoint)
	default:
		return Entry{}, fmt.Errorf("%w: prefix %s: endpoint family %d", errUndecodable, p, v.EndpointFamily)
	}
	e := Entry{Prefix: p, TunnelEndpoint: ep, ClusterID: v.ClusterId, Flags: v.Flags}
	if _, err := e.normalize(); err != nil {
		return Entry{}, fmt.Errorf("%w: %w", errUndecodable, err)
	}
	return e, nil
}
