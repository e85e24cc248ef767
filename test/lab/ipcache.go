package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// IPCacheEntry is one entry of an agent's pinned eBPF ipcache.
type IPCacheEntry struct {
	Prefix         netip.Prefix
	TunnelEndpoint netip.Addr
	ClusterID      uint32
}

// Layout of the ipcache map (bpf/podmesh.c, struct ipcache_key/value), read
// here independently of the bpf package so the lab checks the kernel, not
// the agent's own bookkeeping. A layout change there makes CheckNode fail
// in ebpf mode, which is the point.
const (
	ipcacheKeySize   = 24 // prefixlen u32, family u8, pad[3], addr[16]
	ipcacheValueSize = 28 // endpoint[16], family u8, pad[3], cluster id u32, flags u32
	ipcacheKeyBits   = 32 // family and pad are matched too
	familyV4         = 4
	familyV6         = 6
)

// ReadIPCache reads the ipcache map an agent pinned under bpfRoot, read-only.
func ReadIPCache(bpfRoot string) (map[netip.Prefix]IPCacheEntry, error) {
	path := filepath.Join(bpfRoot, "ipcache")
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned ipcache %s: %w", path, err)
	}
	defer m.Close()
	if m.KeySize() != ipcacheKeySize || m.ValueSize() != ipcacheValueSize {
		return nil, fmt.Errorf("ipcache %s: key/value size %d/%d, the lab knows %d/%d", path, m.KeySize(), m.ValueSize(), ipcacheKeySize, ipcacheValueSize)
	}
	out := map[netip.Prefix]IPCacheEntry{}
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		e, err := decodeIPCache(k, v)
		if err != nil {
			return nil, fmt.Errorf("ipcache %s: %w", path, err)
		}
		out[e.Prefix] = e
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate ipcache %s: %w", path, err)
	}
	return out, nil
}

func decodeIPCache(k, v []byte) (IPCacheEntry, error) {
	if len(k) != ipcacheKeySize || len(v) != ipcacheValueSize {
		return IPCacheEntry{}, errors.New("short entry")
	}
	plen := binary.NativeEndian.Uint32(k[0:4])
	if plen < ipcacheKeyBits {
		return IPCacheEntry{}, fmt.Errorf("prefix length %d", plen)
	}
	bits := int(plen - ipcacheKeyBits)
	addr, err := decodeAddr(k[4], k[8:24])
	if err != nil {
		return IPCacheEntry{}, fmt.Errorf("key: %w", err)
	}
	ep, err := decodeAddr(v[16], v[0:16])
	if err != nil {
		return IPCacheEntry{}, fmt.Errorf("value: %w", err)
	}
	p, err := addr.Prefix(bits)
	if err != nil {
		return IPCacheEntry{}, err
	}
	return IPCacheEntry{Prefix: p, TunnelEndpoint: ep, ClusterID: binary.NativeEndian.Uint32(v[20:24])}, nil
}

func decodeAddr(family byte, b []byte) (netip.Addr, error) {
	switch family {
	case familyV4:
		return netip.AddrFrom4([4]byte(b[:4])), nil
	case familyV6:
		return netip.AddrFrom16([16]byte(b)), nil
	}
	return netip.Addr{}, fmt.Errorf("family %d", family)
}
