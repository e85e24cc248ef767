package bpf

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/internal/testutils"
)

// tc verdicts (linux/pkt_cls.h).
const (
	tcActOK   = 0
	tcActShot = 2
)

// frame builds an Ethernet frame carrying a minimal IPv4 or IPv6 header to
// dst, followed by payloadLen bytes. Source and destination MACs are
// deliberately not the ones the program writes.
func frame(t testing.TB, dst netip.Addr, payloadLen int) []byte {
	t.Helper()
	var b []byte
	b = append(b, 0x0a, 0, 0, 0, 0, 0xd1) // dst MAC
	b = append(b, 0x0a, 0, 0, 0, 0, 0x51) // src MAC
	if dst.Is4() {
		b = binary.BigEndian.AppendUint16(b, 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+payloadLen))
		ip[8] = 64
		ip[9] = 17 // UDP
		copy(ip[12:16], netip.MustParseAddr("10.99.0.1").AsSlice())
		copy(ip[16:20], dst.AsSlice())
		b = append(b, ip...)
	} else {
		b = binary.BigEndian.AppendUint16(b, 0x86dd)
		ip := make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(payloadLen))
		ip[6] = 17
		ip[7] = 64
		copy(ip[8:24], netip.MustParseAddr("fd99::1").AsSlice())
		copy(ip[24:40], dst.AsSlice())
		b = append(b, ip...)
	}
	return append(b, make([]byte, payloadLen)...)
}

type runResult struct {
	verdict uint32
	out     []byte
}

func runProg(t testing.TB, d *Datapath, in []byte) runResult {
	t.Helper()
	out := make([]byte, len(in)+256)
	ret, err := d.objs.PodmeshEgress.Run(&ebpf.RunOptions{Data: in, DataOut: out})
	require.NoError(t, err, "BPF_PROG_RUN")
	// The kernel shrinks DataOut to what it wrote.
	return runResult{verdict: ret, out: out}
}

func mustMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	require.NoError(t, err)
	return m
}

func counters(t testing.TB, d *Datapath) map[uint32]Counter {
	t.Helper()
	c, err := d.Counters()
	require.NoError(t, err)
	return c
}

func drops(t testing.TB, d *Datapath) Drops {
	t.Helper()
	dr, err := d.Drops()
	require.NoError(t, err)
	return dr
}

func TestProgramHitIPv4RewritesMACsAndCounts(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 7)
	_, err := d.Sync([]Entry{{
		Prefix:         netip.MustParsePrefix("10.2.0.0/16"),
		TunnelEndpoint: netip.MustParseAddr("192.168.1.2"),
		ClusterID:      2,
	}}, true)
	require.NoError(t, err)

	in := frame(t, netip.MustParseAddr("10.2.3.4"), 100)
	res := runProg(t, d, in)
	require.Equal(t, uint32(tcActOK), res.verdict, "a hit passes the frame on (drops: %+v)", drops(t, d))
	require.Equal(t, mustMAC(t, DeviceMAC), net.HardwareAddr(res.out[0:6]), "inner destination MAC")
	require.Equal(t, mustMAC(t, InnerSourceMAC), net.HardwareAddr(res.out[6:12]), "inner source MAC")
	require.Equal(t, in[12:], res.out[12:len(in)], "everything after the MACs is untouched")

	require.Equal(t, map[uint32]Counter{2: {Packets: 1, Bytes: uint64(len(in))}}, counters(t, d))
	require.Equal(t, Drops{}, drops(t, d))
}

func TestProgramHitIPv6(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 7)
	_, err := d.Sync([]Entry{{
		Prefix:         netip.MustParsePrefix("fd00:2::/64"),
		TunnelEndpoint: netip.MustParseAddr("fd77::2"),
		ClusterID:      3,
	}}, true)
	require.NoError(t, err)

	in := frame(t, netip.MustParseAddr("fd00:2::9"), 60)
	res := runProg(t, d, in)
	require.Equal(t, uint32(tcActOK), res.verdict, "drops: %+v", drops(t, d))
	require.Equal(t, mustMAC(t, DeviceMAC), net.HardwareAddr(res.out[0:6]))
	require.Equal(t, mustMAC(t, InnerSourceMAC), net.HardwareAddr(res.out[6:12]))
	require.Equal(t, map[uint32]Counter{3: {Packets: 1, Bytes: uint64(len(in))}}, counters(t, d))
}

func TestProgramMissIsShotAndCounted(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 7)
	_, err := d.Sync([]Entry{{
		Prefix:         netip.MustParsePrefix("10.2.0.0/16"),
		TunnelEndpoint: netip.MustParseAddr("192.168.1.2"),
		ClusterID:      2,
	}}, true)
	require.NoError(t, err)

	v4 := frame(t, netip.MustParseAddr("10.3.0.1"), 10)
	v6 := frame(t, netip.MustParseAddr("fd00:3::1"), 10)
	require.Equal(t, uint32(tcActShot), runProg(t, d, v4).verdict)
	require.Equal(t, uint32(tcActShot), runProg(t, d, v6).verdict)

	require.Empty(t, counters(t, d), "a miss is not counted for any cluster")
	require.Equal(t, Drops{Miss: Counter{Packets: 2, Bytes: uint64(len(v4) + len(v6))}}, drops(t, d))
}

func TestProgramIPv4AndIPv6PrefixesDoNotMatchEachOther(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 7)
	// ::/0 must not catch IPv4, 0.0.0.0/0 must not catch IPv6: the family
	// byte is part of every key.
	_, err := d.Sync([]Entry{{
		Prefix:         netip.MustParsePrefix("::/0"),
		TunnelEndpoint: netip.MustParseAddr("fd77::2"),
		ClusterID:      6,
	}}, true)
	require.NoError(t, err)
	require.Equal(t, uint32(tcActShot), runProg(t, d, frame(t, netip.MustParseAddr("10.0.0.1"), 0)).verdict)
	require.Equal(t, uint32(tcActOK), runProg(t, d, frame(t, netip.MustParseAddr("2001:db8::1"), 0)).verdict)

	_, err = d.Sync([]Entry{{
		Prefix:         netip.MustParsePrefix("0.0.0.0/0"),
		TunnelEndpoint: netip.MustParseAddr("192.168.1.4"),
		ClusterID:      4,
	}}, true)
	require.NoError(t, err)
	require.Equal(t, uint32(tcActShot), runProg(t, d, frame(t, netip.MustParseAddr("2001:db8::1"), 0)).verdict)
	require.Equal(t, uint32(tcActOK), runProg(t, d, frame(t, netip.MustParseAddr("10.0.0.1"), 0)).verdict)
}

func TestProgramLongestPrefixWins(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 7)
	_, err := d.Sync([]Entry{
		{Prefix: netip.MustParsePrefix("10.2.3.0/24"), TunnelEndpoint: netip.MustParseAddr("192.168.1.2"), ClusterID: 2},
		{Prefix: netip.MustParsePrefix("10.2.3.9/32"), TunnelEndpoint: netip.MustParseAddr("192.168.1.3"), ClusterID: 3},
		{Prefix: netip.MustParsePrefix("fd00:2::/64"), TunnelEndpoint: netip.MustParseAddr("fd77::2"), ClusterID: 2},
		{Prefix: netip.MustParsePrefix("fd00:2::9/128"), TunnelEndpoint: netip.MustParseAddr("fd77::3"), ClusterID: 3},
	}, true)
	require.NoError(t, err)

	host4 := frame(t, netip.MustParseAddr("10.2.3.9"), 11)
	net4 := frame(t, netip.MustParseAddr("10.2.3.10"), 22)
	host6 := frame(t, netip.MustParseAddr("fd00:2::9"), 33)
	net6 := frame(t, netip.MustParseAddr("fd00:2::a"), 44)
	for _, in := range [][]byte{host4, net4, host6, net6} {
		require.Equal(t, uint32(tcActOK), runProg(t, d, in).verdict)
	}
	require.Equal(t, map[uint32]Counter{
		2: {Packets: 2, Bytes: uint64(len(net4) + len(net6))},
		3: {Packets: 2, Bytes: uint64(len(host4) + len(host6))},
	}, counters(t, d))
}

func TestProgramCountersPerCluster(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 7)
	var entries []Entry
	for id := uint32(1); id <= 4; id++ {
		entries = append(entries, Entry{
			Prefix:         netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id), 0, 0}), 16),
			TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, 1, byte(id)}),
			ClusterID:      id,
		})
	}
	entries = append(entries, Entry{
		Prefix:         netip.MustParsePrefix("10.255.0.0/16"),
		TunnelEndpoint: netip.MustParseAddr("192.168.1.255"),
		ClusterID:      MaxClusterID,
	})
	_, err := d.Sync(entries, true)
	require.NoError(t, err)

	want := make(map[uint32]Counter)
	send := func(id uint32, dst netip.Addr, payload int) {
		in := frame(t, dst, payload)
		require.Equal(t, uint32(tcActOK), runProg(t, d, in).verdict)
		c := want[id]
		c.Packets++
		c.Bytes += uint64(len(in))
		want[id] = c
	}
	for i := range 5 {
		send(1, netip.MustParseAddr("10.1.0.1"), 10*i)
	}
	send(2, netip.MustParseAddr("10.2.9.9"), 1400)
	send(2, netip.MustParseAddr("10.2.9.8"), 0)
	send(4, netip.MustParseAddr("10.4.1.1"), 512)
	send(MaxClusterID, netip.MustParseAddr("10.255.1.1"), 1)
	require.Equal(t, want, counters(t, d), "cluster 3 saw no traffic and is absent")
}

func TestProgramDropsMalformed(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 7)
	_, err := d.Sync([]Entry{{
		Prefix:         netip.MustParsePrefix("0.0.0.0/0"),
		TunnelEndpoint: netip.MustParseAddr("192.168.1.2"),
		ClusterID:      2,
	}}, true)
	require.NoError(t, err)

	arp := frame(t, netip.MustParseAddr("10.0.0.1"), 0)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	lldp := frame(t, netip.MustParseAddr("10.0.0.1"), 20)
	binary.BigEndian.PutUint16(lldp[12:], 0x88cc)
	// Truncated IP headers cannot be fed in: BPF_PROG_RUN refuses an IPv4
	// or IPv6 frame shorter than its fixed header with EINVAL, and the
	// program reads nothing beyond the fixed header.
	require.Equal(t, uint32(tcActShot), runProg(t, d, arp).verdict)
	require.Equal(t, uint32(tcActShot), runProg(t, d, lldp).verdict)
	require.Equal(t, Drops{Malformed: Counter{Packets: 2, Bytes: uint64(len(arp) + len(lldp))}}, drops(t, d))
	require.Empty(t, counters(t, d))
}

func TestProgramUnconfiguredDrops(t *testing.T) {
	testutils.RequireRoot(t)
	d, _ := loadTest(t, 7)
	_, err := d.Sync([]Entry{{
		Prefix:         netip.MustParsePrefix("0.0.0.0/0"),
		TunnelEndpoint: netip.MustParseAddr("192.168.1.2"),
		ClusterID:      2,
	}}, true)
	require.NoError(t, err)
	// Wipe the config the loader wrote: the program must not send frames
	// with VNI 0 and a zero MAC.
	require.NoError(t, d.objs.PodmeshConfig.Put(uint32(0), podmeshConfig{}))
	in := frame(t, netip.MustParseAddr("10.0.0.1"), 0)
	require.Equal(t, uint32(tcActShot), runProg(t, d, in).verdict)
	require.Equal(t, Drops{NotConfigured: Counter{Packets: 1, Bytes: uint64(len(in))}}, drops(t, d))
}
