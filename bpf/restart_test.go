package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"

	"github.com/podmesh/podmesh/internal/testutils"
)

// stream sends numbered datagrams from client to server in lockstep: each
// must arrive before the next is sent. One that has not arrived within
// lossTimeout counts as lost; no test step waits on that timeout, it only
// bounds how long a lost datagram is waited for.
type stream struct {
	acked atomic.Int64
	kick  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	// Written by the sender goroutine, read after done is closed.
	sent, lost int
	err        error
}

const lossTimeout = 5 * time.Second

func startStream(client, server *net.UDPConn) *stream {
	s := &stream{kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	to := server.LocalAddr().(*net.UDPAddr).AddrPort()
	go func() {
		defer close(s.done)
		buf := make([]byte, 64)
		for seq := uint64(0); ; seq++ {
			select {
			case <-s.stop:
				return
			default:
			}
			if _, s.err = client.WriteToUDPAddrPort(binary.BigEndian.AppendUint64(nil, seq), to); s.err != nil {
				return
			}
			s.sent++
			for {
				if s.err = server.SetReadDeadline(time.Now().Add(lossTimeout)); s.err != nil {
					return
				}
				n, _, err := server.ReadFromUDPAddrPort(buf)
				if isTimeout(err) {
					s.lost++
					break
				}
				if err != nil {
					s.err = err
					return
				}
				if n == 8 && binary.BigEndian.Uint64(buf) == seq {
					s.acked.Add(1)
					select {
					case s.kick <- struct{}{}:
					default:
					}
					break
				}
			}
		}
	}()
	return s
}

// waitAcks waits until n more datagrams than now have arrived.
func (s *stream) waitAcks(t *testing.T, n int64) {
	t.Helper()
	target := s.acked.Load() + n
	for s.acked.Load() < target {
		select {
		case <-s.kick:
		case <-s.done:
			t.Fatalf("stream ended early: sent %d, lost %d, err %v", s.sent, s.lost, s.err)
		}
	}
}

func (s *stream) finish() (sent, lost int, err error) {
	close(s.stop)
	<-s.done
	return s.sent, s.lost, s.err
}

// attached returns the programs attached at TCX egress of the node's
// VXLAN device.
func attached(t *testing.T, n *node) []link.AttachedProgram {
	t.Helper()
	var res *link.QueryResult
	require.NoError(t, inNetNS(n.ns, func() error {
		var err error
		res, err = link.QueryPrograms(link.QueryOptions{Target: n.vxlanIdx, Attach: ebpf.AttachTCXEgress})
		return err
	}))
	return res.Programs
}

func progID(t *testing.T, d *Datapath) ebpf.ProgramID {
	t.Helper()
	info, err := d.objs.PodmeshEgress.Info()
	require.NoError(t, err)
	id, ok := info.ID()
	require.True(t, ok)
	return id
}

func sortedEntries(t *testing.T, d *Datapath) []Entry {
	t.Helper()
	es, err := d.Entries()
	require.NoError(t, err)
	slices.SortFunc(es, func(a, b Entry) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return es
}

// extraEntries returns n /24 prefixes under 10.64.0.0/10 of cluster 3.
func extraEntries(n int) []Entry {
	out := make([]Entry, 0, n)
	for i := range n {
		out = append(out, Entry{
			Prefix:         netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(64 + i>>8), byte(i), 0}), 24),
			TunnelEndpoint: netip.MustParseAddr("192.168.77.3"),
			ClusterID:      3,
			Flags:          uint32(i),
		})
	}
	return out
}

// restartAndStream restarts node a's datapath while a lockstep stream runs
// from a to b, and checks that no datagram was lost and the counters kept
// counting across the restart.
func restartAndStream(t *testing.T, a, b *node, afterLoad func(d *Datapath)) {
	t.Helper()
	warm := []byte("warm-up")
	wc := listenUDP(t, a.ns, netip.AddrPortFrom(a.pod4, 0))
	ws := listenUDP(t, b.ns, netip.AddrPortFrom(b.pod4, 7777))
	warmSent, _ := roundTrip(t, wc, ws, warm, time.Now().Add(20*time.Second))

	progs := attached(t, a)
	require.Len(t, progs, 1)
	linkBefore, ok := progs[0].LinkID()
	require.True(t, ok, "attached through a link")
	require.Equal(t, progID(t, a.dp), progs[0].ID)
	oldProg := progs[0].ID
	entriesBefore := sortedEntries(t, a.dp)

	client := listenUDP(t, a.ns, netip.AddrPortFrom(a.pod4, 0))
	server := listenUDP(t, b.ns, netip.AddrPortFrom(b.pod4, 7778))
	st := startStream(client, server)
	st.waitAcks(t, 20)

	require.NoError(t, a.dp.Close())
	st.waitAcks(t, 20) // no agent: the pinned link keeps forwarding

	d2, err := Load(Options{PinDir: a.pinDir, LocalClusterID: a.clusterID, Log: testLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { d2.Close() })
	if afterLoad != nil {
		afterLoad(d2)
	}
	st.waitAcks(t, 20) // loaded, not yet attached: the old program still runs
	require.Equal(t, entriesBefore, sortedEntries(t, d2), "adopted every entry")

	require.NoError(t, inNetNS(a.ns, func() error { return d2.Attach(a.vxlanIdx) }))
	st.waitAcks(t, 20)
	sent, lost, err := st.finish()
	require.NoError(t, err)
	require.Zero(t, lost, "datagrams lost across the restart (of %d sent)", sent)
	t.Logf("%d datagrams sent across the restart, none lost", sent)

	progs = attached(t, a)
	require.Len(t, progs, 1, "exactly one program at egress")
	linkAfter, _ := progs[0].LinkID()
	require.Equal(t, linkBefore, linkAfter, "the pinned link was updated in place")
	require.Equal(t, progID(t, d2), progs[0].ID, "the new program runs")
	require.NotEqual(t, oldProg, progs[0].ID)

	// The counters map was adopted: it counted every datagram of both
	// program generations.
	frame := func(payload int) uint64 { return uint64(14 + 20 + 8 + payload) }
	want := Counter{
		Packets: uint64(warmSent + sent),
		Bytes:   uint64(warmSent)*frame(len(warm)) + uint64(sent)*frame(8),
	}
	require.Equal(t, want, counters(t, d2)[b.clusterID])
	a.dp = d2
}

func TestRestartAdoptsMapsAndUpdatesLinkInPlace(t *testing.T) {
	testutils.RequireRoot(t)
	a, b := setupPair(t, pairOptions{})
	base, err := a.dp.Entries()
	require.NoError(t, err)
	_, err = a.dp.Sync(append(slices.Clone(base), extraEntries(1000)...), true)
	require.NoError(t, err)

	restartAndStream(t, a, b, nil)

	// Adopting never prunes by itself; only a Sync with prune does.
	stats, err := a.dp.Sync(base, false)
	require.NoError(t, err)
	require.Equal(t, SyncStats{}, stats)
	require.Len(t, sortedEntries(t, a.dp), len(base)+1000)
	stats, err = a.dp.Sync(base, true)
	require.NoError(t, err)
	require.Equal(t, SyncStats{Deleted: 1000}, stats)
}

func TestMigrationKeepsForwarding(t *testing.T) {
	testutils.RequireRoot(t)
	// The "older" datapath: same program, an ipcache of smaller capacity.
	const oldMax = 1024
	a, b := setupPair(t, pairOptions{specHook: func(s *ebpf.CollectionSpec) {
		s.Maps[podmeshMapPodmeshIpcache].MaxEntries = oldMax
	}})
	_, err := a.dp.Sync(append(sortedEntries(t, a.dp), extraEntries(300)...), true)
	require.NoError(t, err)
	old, err := ebpf.LoadPinnedMap(filepath.Join(a.pinDir, pinIpcache), nil)
	require.NoError(t, err)
	require.Equal(t, uint32(oldMax), old.MaxEntries())
	old.Close()

	restartAndStream(t, a, b, func(d *Datapath) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(a.pinDir, pinIpcache), nil)
		require.NoError(t, err)
		defer m.Close()
		require.Equal(t, d.objs.PodmeshIpcache.MaxEntries(), m.MaxEntries(), "the migrated map replaced the pin")
		require.NotEqual(t, uint32(oldMax), m.MaxEntries())
		_, err = os.Stat(filepath.Join(a.pinDir, pinIpcache+pinMigratingSuffix))
		require.ErrorIs(t, err, os.ErrNotExist)
	})

	// The attached program reads the new map: withdraw b's prefixes there
	// and the next datagram is a miss.
	_, err = a.dp.Sync(nil, true)
	require.NoError(t, err)
	before := drops(t, a.dp).Miss.Packets
	c := listenUDP(t, a.ns, netip.AddrPortFrom(a.pod4, 0))
	_, err = c.WriteToUDPAddrPort([]byte("x"), netip.AddrPortFrom(b.pod4, 7777))
	require.NoError(t, err)
	// The tc egress hook runs in the sender's context before sendto
	// returns (the VXLAN device has no queue), so the count is already in.
	require.Equal(t, before+1, drops(t, a.dp).Miss.Packets)
}

func TestLoadMigratesIncompatibleIpcache(t *testing.T) {
	testutils.RequireRoot(t)
	valid := []Entry{
		{Prefix: netip.MustParsePrefix("10.1.0.0/16"), TunnelEndpoint: netip.MustParseAddr("192.168.0.1"), ClusterID: 1, Flags: 7},
		{Prefix: netip.MustParsePrefix("10.2.3.4/32"), TunnelEndpoint: netip.MustParseAddr("fd77::2"), ClusterID: 2},
		{Prefix: netip.MustParsePrefix("fd00:5::/64"), TunnelEndpoint: netip.MustParseAddr("192.168.0.5"), ClusterID: 5},
	}
	for _, tc := range []struct {
		name string
		spec *ebpf.MapSpec
		// fill writes the old map's content; want is what must survive.
		fill func(t *testing.T, m *ebpf.Map)
		want []Entry
	}{{
		name: "older capacity, same entry layout",
		spec: &ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 24, ValueSize: 28, MaxEntries: 16, Flags: 1 /* BPF_F_NO_PREALLOC */},
		fill: func(t *testing.T, m *ebpf.Map) {
			for _, e := range valid {
				require.NoError(t, m.Put(encodeKey(e.Prefix), encodeValue(e)))
			}
			// Not decodable: an unknown family and a bad endpoint family.
			bad := encodeKey(netip.MustParsePrefix("10.9.0.0/16"))
			bad.Family = 9
			require.NoError(t, m.Put(bad, encodeValue(valid[0])))
			badVal := encodeValue(valid[0])
			badVal.EndpointFamily = 0
			require.NoError(t, m.Put(encodeKey(netip.MustParsePrefix("10.8.0.0/16")), badVal))
		},
		want: valid,
	}, {
		name: "different key and value layout",
		spec: &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 16},
		fill: func(t *testing.T, m *ebpf.Map) {
			require.NoError(t, m.Put(uint64(1), uint64(2)))
		},
		want: nil,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testPinDir(t)
			require.NoError(t, os.MkdirAll(dir, 0o700))
			old, err := ebpf.NewMap(tc.spec)
			require.NoError(t, err)
			require.NoError(t, old.Pin(filepath.Join(dir, pinIpcache)))
			tc.fill(t, old)
			require.NoError(t, old.Close())

			d, err := Load(Options{PinDir: dir, LocalClusterID: 1, Log: testLogger(t)})
			require.NoError(t, err)
			defer d.Close()
			got := sortedEntries(t, d)
			want := slices.Clone(tc.want)
			slices.SortFunc(want, func(a, b Entry) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
			if len(want) == 0 {
				require.Empty(t, got)
			} else {
				require.Equal(t, want, got)
			}

			pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinIpcache), nil)
			require.NoError(t, err)
			defer pinned.Close()
			var specs podmeshSpecs
			spec, err := loadPodmesh()
			require.NoError(t, err)
			require.NoError(t, spec.Assign(&specs))
			require.NoError(t, specs.PodmeshIpcache.Compatible(pinned), "the pin holds the current layout")

			// A second Load adopts the migrated map as is.
			require.NoError(t, d.Close())
			d2, err := Load(Options{PinDir: dir, LocalClusterID: 1, Log: testLogger(t)})
			require.NoError(t, err)
			defer d2.Close()
			if len(want) == 0 {
				require.Empty(t, sortedEntries(t, d2))
			} else {
				require.Equal(t, want, sortedEntries(t, d2))
			}
		})
	}
}

func TestRemoveDetachesAndUnpins(t *testing.T) {
	testutils.RequireRoot(t)
	for _, mode := range []attachMode{attachAuto, attachClsBPF} {
		t.Run(map[attachMode]string{attachAuto: "tcx", attachClsBPF: "cls_bpf"}[mode], func(t *testing.T) {
			a, _ := setupPair(t, pairOptions{mode: mode})
			if mode == attachAuto {
				require.Len(t, attached(t, a), 1)
			}
			require.NoError(t, a.dp.Close())
			require.NoError(t, inNetNS(a.ns, func() error { return Remove(a.pinDir, a.vxlanIdx) }))
			require.Empty(t, attached(t, a), "nothing left at TCX egress")
			require.NoError(t, inNetNS(a.ns, func() error {
				f, err := findClsFilter(a.vxlanIdx)
				if err == nil && f != nil {
					err = fmt.Errorf("cls_bpf filter left: %+v", f)
				}
				return err
			}))
			_, err := os.Stat(a.pinDir)
			require.ErrorIs(t, err, os.ErrNotExist, "pin directory removed")
			// Remove is idempotent.
			require.NoError(t, inNetNS(a.ns, func() error { return Remove(a.pinDir, a.vxlanIdx) }))
		})
	}
}

func TestAttachAfterDeviceRecreated(t *testing.T) {
	testutils.RequireRoot(t)
	a, b := setupPair(t, pairOptions{})
	oldIdx := a.vxlanIdx
	oldPin := a.dp.linkPath(oldIdx)

	// Attach again: idempotent, still one program on one link.
	progs := attached(t, a)
	require.Len(t, progs, 1)
	linkID, _ := progs[0].LinkID()
	require.NoError(t, inNetNS(a.ns, func() error { return a.dp.Attach(a.vxlanIdx) }))
	progs = attached(t, a)
	require.Len(t, progs, 1)
	again, _ := progs[0].LinkID()
	require.Equal(t, linkID, again)

	// The datapath engineer's reconciler recreates a broken device: the old
	// link becomes defunct, the new device has another ifindex.
	vx, err := a.h.LinkByName(vxlanName)
	require.NoError(t, err)
	require.NoError(t, a.h.LinkDel(vx))
	require.NoError(t, a.h.LinkAdd(&netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: vxlanName, MTU: 1450, HardwareAddr: mustMAC(t, DeviceMAC)},
		FlowBased: true,
		Port:      vxlanPort,
	}))
	vx, err = a.h.LinkByName(vxlanName)
	require.NoError(t, err)
	require.NoError(t, a.h.LinkSetARPOff(vx))
	require.NoError(t, a.h.LinkSetUp(vx))
	a.vxlanIdx = vx.Attrs().Index
	require.NotEqual(t, oldIdx, a.vxlanIdx)
	require.NoError(t, a.h.RouteAdd(&netlink.Route{
		LinkIndex: a.vxlanIdx,
		Dst:       prefixNet(netip.PrefixFrom(b.pod4, 24).Masked()),
		Src:       a.pod4.AsSlice(),
		Scope:     netlink.SCOPE_LINK,
	}))

	require.NoError(t, inNetNS(a.ns, func() error { return a.dp.Attach(a.vxlanIdx) }))
	require.Len(t, attached(t, a), 1)
	_, err = os.Stat(oldPin)
	require.ErrorIs(t, err, os.ErrNotExist, "the defunct link was unpinned")
	_, err = os.Stat(a.dp.linkPath(a.vxlanIdx))
	require.NoError(t, err)

	c := listenUDP(t, a.ns, netip.AddrPortFrom(a.pod4, 0))
	s := listenUDP(t, b.ns, netip.AddrPortFrom(b.pod4, 7777))
	roundTrip(t, c, s, []byte("after recreate"), time.Now().Add(20*time.Second))
}

func TestRestartClsBPFReplacesFilterInPlace(t *testing.T) {
	testutils.RequireRoot(t)
	a, b := setupPair(t, pairOptions{mode: attachClsBPF})
	filterProg := func() int {
		var id int
		require.NoError(t, inNetNS(a.ns, func() error {
			// No require in here: this runs on another goroutine.
			f, err := findClsFilter(a.vxlanIdx)
			if err == nil && f == nil {
				err = errors.New("podmesh cls_bpf filter not found")
			}
			if err == nil {
				id = f.Id
			}
			return err
		}))
		return id
	}
	require.Equal(t, int(progID(t, a.dp)), filterProg())

	wc := listenUDP(t, a.ns, netip.AddrPortFrom(a.pod4, 0))
	ws := listenUDP(t, b.ns, netip.AddrPortFrom(b.pod4, 7777))
	roundTrip(t, wc, ws, []byte("warm-up"), time.Now().Add(20*time.Second))

	client := listenUDP(t, a.ns, netip.AddrPortFrom(a.pod4, 0))
	server := listenUDP(t, b.ns, netip.AddrPortFrom(b.pod4, 7778))
	st := startStream(client, server)
	st.waitAcks(t, 20)
	require.NoError(t, a.dp.Close())
	st.waitAcks(t, 20) // the filter holds the program
	d2, err := Load(Options{PinDir: a.pinDir, LocalClusterID: a.clusterID, Log: testLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { d2.Close() })
	d2.mode = attachClsBPF
	require.NoError(t, inNetNS(a.ns, func() error { return d2.Attach(a.vxlanIdx) }))
	st.waitAcks(t, 20)
	sent, lost, err := st.finish()
	require.NoError(t, err)
	require.Zero(t, lost, "datagrams lost across the restart (of %d sent)", sent)
	require.Equal(t, int(progID(t, d2)), filterProg(), "the filter now runs the new program")
	require.Empty(t, attached(t, a), "no TCX program besides the filter")
}
