package bpf

import (
	"net"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

func TestLayoutSizes(t *testing.T) {
	// The map definitions in podmesh.c fix these; migration relies on them.
	require.Equal(t, uintptr(24), unsafe.Sizeof(podmeshIpcacheKey{}))
	require.Equal(t, uintptr(28), unsafe.Sizeof(podmeshIpcacheValue{}))
	require.Equal(t, uintptr(16), unsafe.Sizeof(podmeshConfig{}))
}

func TestEncodeKey(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		want   podmeshIpcacheKey
	}{
		{"10.1.2.0/24", podmeshIpcacheKey{Prefixlen: 56, Family: familyIPv4, Addr: [16]byte{10, 1, 2}}},
		{"10.1.2.3/32", podmeshIpcacheKey{Prefixlen: 64, Family: familyIPv4, Addr: [16]byte{10, 1, 2, 3}}},
		{"0.0.0.0/0", podmeshIpcacheKey{Prefixlen: 32, Family: familyIPv4}},
		{"fd00:1::/64", podmeshIpcacheKey{Prefixlen: 96, Family: familyIPv6, Addr: [16]byte{0xfd, 0, 0, 1}}},
		{"fd00::1/128", podmeshIpcacheKey{Prefixlen: 160, Family: familyIPv6, Addr: [16]byte{0xfd, 15: 1}}},
		{"::/0", podmeshIpcacheKey{Prefixlen: 32, Family: familyIPv6}},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			p := netip.MustParsePrefix(tc.prefix)
			require.Equal(t, tc.want, encodeKey(p))
			back, err := decodeKey(tc.want)
			require.NoError(t, err)
			require.Equal(t, p, back)
		})
	}
}

func TestDecodeKeyRejectsForeignKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  podmeshIpcacheKey
	}{
		{"zero key", podmeshIpcacheKey{}},
		{"unknown family", podmeshIpcacheKey{Prefixlen: 40, Family: 2}},
		{"prefixlen below header", podmeshIpcacheKey{Prefixlen: 31, Family: familyIPv4}},
		{"ipv4 prefix too long", podmeshIpcacheKey{Prefixlen: 65, Family: familyIPv4}},
		{"ipv6 prefix too long", podmeshIpcacheKey{Prefixlen: 161, Family: familyIPv6}},
		{"padding set", podmeshIpcacheKey{Prefixlen: 40, Family: familyIPv4, Pad: [3]byte{1}}},
		{"ipv4 with bytes past the address", podmeshIpcacheKey{Prefixlen: 40, Family: familyIPv4, Addr: [16]byte{10, 4: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeKey(tc.key)
			require.ErrorIs(t, err, errUndecodable)
		})
	}
}

func TestDecodeKeyMasksHostBits(t *testing.T) {
	// The trie matches only prefixlen bits; a key written with host bits set
	// names the masked prefix.
	p, err := decodeKey(podmeshIpcacheKey{Prefixlen: 56, Family: familyIPv4, Addr: [16]byte{10, 1, 2, 3}})
	require.NoError(t, err)
	require.Equal(t, netip.MustParsePrefix("10.1.2.0/24"), p)
}

func TestEncodeValue(t *testing.T) {
	for _, tc := range []struct {
		name  string
		entry Entry
		want  podmeshIpcacheValue
	}{{
		name:  "ipv4 endpoint",
		entry: Entry{Prefix: netip.MustParsePrefix("10.0.0.0/8"), TunnelEndpoint: netip.MustParseAddr("192.168.1.2"), ClusterID: 3, Flags: 0x10},
		want:  podmeshIpcacheValue{Endpoint: [16]byte{192, 168, 1, 2}, EndpointFamily: familyIPv4, ClusterId: 3, Flags: 0x10},
	}, {
		name:  "ipv6 endpoint",
		entry: Entry{Prefix: netip.MustParsePrefix("10.0.0.0/8"), TunnelEndpoint: netip.MustParseAddr("fd77::2"), ClusterID: 255},
		want:  podmeshIpcacheValue{Endpoint: [16]byte{0xfd, 0x77, 15: 2}, EndpointFamily: familyIPv6, ClusterId: 255},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, encodeValue(tc.entry))
			back, err := decodeEntry(encodeKey(tc.entry.Prefix), tc.want)
			require.NoError(t, err)
			require.Equal(t, tc.entry, back)
		})
	}
}

func TestDecodeEntryRejectsForeignValues(t *testing.T) {
	k := encodeKey(netip.MustParsePrefix("10.0.0.0/8"))
	good := podmeshIpcacheValue{Endpoint: [16]byte{192, 168, 1, 2}, EndpointFamily: familyIPv4, ClusterId: 3}
	for _, tc := range []struct {
		name   string
		mutate func(*podmeshIpcacheValue)
	}{
		{"zero endpoint family", func(v *podmeshIpcacheValue) { v.EndpointFamily = 0 }},
		{"padding set", func(v *podmeshIpcacheValue) { v.Pad[2] = 1 }},
		{"ipv4 endpoint with trailing bytes", func(v *podmeshIpcacheValue) { v.Endpoint[5] = 1 }},
		{"cluster 0", func(v *podmeshIpcacheValue) { v.ClusterId = 0 }},
		{"cluster 256", func(v *podmeshIpcacheValue) { v.ClusterId = 256 }},
		{"unspecified endpoint", func(v *podmeshIpcacheValue) { v.Endpoint = [16]byte{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := good
			tc.mutate(&v)
			_, err := decodeEntry(k, v)
			require.ErrorIs(t, err, errUndecodable)
		})
	}
}

func TestNormalize(t *testing.T) {
	ep := netip.MustParseAddr("192.168.1.2")
	for _, tc := range []struct {
		name    string
		in      Entry
		want    Entry
		wantErr error
	}{{
		name: "masks host bits",
		in:   Entry{Prefix: netip.MustParsePrefix("10.1.2.3/16"), TunnelEndpoint: ep, ClusterID: 1},
		want: Entry{Prefix: netip.MustParsePrefix("10.1.0.0/16"), TunnelEndpoint: ep, ClusterID: 1},
	}, {
		name: "unmaps IPv4-mapped prefix and endpoint",
		in:   Entry{Prefix: netip.MustParsePrefix("::ffff:10.1.0.0/112"), TunnelEndpoint: netip.MustParseAddr("::ffff:192.168.1.2"), ClusterID: 1},
		want: Entry{Prefix: netip.MustParsePrefix("10.1.0.0/16"), TunnelEndpoint: ep, ClusterID: 1},
	}, {
		name:    "invalid prefix",
		in:      Entry{TunnelEndpoint: ep, ClusterID: 1},
		wantErr: ErrInvalidEntry,
	}, {
		name:    "invalid endpoint",
		in:      Entry{Prefix: netip.MustParsePrefix("10.0.0.0/8"), ClusterID: 1},
		wantErr: ErrInvalidEntry,
	}, {
		name:    "unspecified endpoint",
		in:      Entry{Prefix: netip.MustParsePrefix("10.0.0.0/8"), TunnelEndpoint: netip.IPv6Unspecified(), ClusterID: 1},
		wantErr: ErrInvalidEntry,
	}, {
		name:    "cluster 0",
		in:      Entry{Prefix: netip.MustParsePrefix("10.0.0.0/8"), TunnelEndpoint: ep},
		wantErr: ErrInvalidEntry,
	}, {
		name:    "cluster above MaxClusterID",
		in:      Entry{Prefix: netip.MustParsePrefix("10.0.0.0/8"), TunnelEndpoint: ep, ClusterID: MaxClusterID + 1},
		wantErr: ErrInvalidEntry,
	}, {
		name:    "IPv4-mapped prefix shorter than /96",
		in:      Entry{Prefix: netip.MustParsePrefix("::ffff:0.0.0.0/80"), TunnelEndpoint: ep, ClusterID: 1},
		wantErr: ErrInvalidEntry,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.in.normalize()
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestMACConstants(t *testing.T) {
	dev, err := net.ParseMAC(DeviceMAC)
	require.NoError(t, err)
	src, err := net.ParseMAC(InnerSourceMAC)
	require.NoError(t, err)
	require.NotEqual(t, dev, src, "the receiver's loop check drops inner source == device MAC")
	for _, m := range []net.HardwareAddr{dev, src} {
		require.Len(t, m, 6)
		require.Equal(t, byte(0x02), m[0]&0x03, "locally administered unicast")
	}
	cfg, err := newConfig(9)
	require.NoError(t, err)
	require.Equal(t, podmeshConfig{LocalClusterId: 9, DeviceMac: [6]byte(dev), SourceMac: [6]byte(src)}, cfg)
}
