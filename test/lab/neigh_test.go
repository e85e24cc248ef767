package lab

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/bpf"
	"github.com/podmesh/podmesh/internal/testutils"
)

func TestTunnelCheckFindsEveryEntryTheModeDoesNotProgram(t *testing.T) {
	ep1, ep2 := netip.MustParseAddr("192.168.2.11"), netip.MustParseAddr("192.168.2.12")
	want := map[netip.Prefix]netip.Addr{
		netip.MustParsePrefix("10.2.1.0/24"): ep1,
		netip.MustParsePrefix("10.2.2.0/24"): ep2,
		netip.MustParsePrefix("10.2.9.7/32"): ep2, // a pool node's pod
	}
	ebpfDev := TunnelState{Exists: true, NoARP: true, MAC: bpf.DeviceMAC, Neigh: []TunnelNeigh{
		{IP: netip.MustParseAddr("10.2.1.5"), MAC: bpf.DeviceMAC, State: netlink.NUD_NOARP},
		{IP: netip.MustParseAddr("ff02::2"), MAC: "33:33:00:00:00:02", State: netlink.NUD_NOARP},
	}}
	vxlanDev := TunnelState{Exists: true, MAC: "0e:70:c0:a8:01:0b",
		Neigh: []TunnelNeigh{
			{IP: ep1, MAC: "0e:70:c0:a8:02:0b", State: netlink.NUD_PERMANENT},
			{IP: ep2, MAC: "0e:70:c0:a8:02:0c", State: netlink.NUD_PERMANENT},
		},
		FDB: []TunnelFDB{
			{MAC: "0e:70:c0:a8:02:0b", Dst: ep1, State: netlink.NUD_PERMANENT},
			{MAC: "0e:70:c0:a8:02:0c", Dst: ep2, State: netlink.NUD_PERMANENT},
		}}
	with := func(st TunnelState, edit func(*TunnelState)) TunnelState {
		st.Neigh, st.FDB = slices.Clone(st.Neigh), slices.Clone(st.FDB)
		edit(&st)
		return st
	}
	for _, tc := range []struct {
		name string
		mode string
		st   TunnelState
		want map[netip.Prefix]netip.Addr
		diff []string // substrings, one per expected difference
	}{
		{name: "ebpf as programmed", mode: ModeEBPF, st: ebpfDev, want: want},
		{name: "ebpf with a permanent neighbour", mode: ModeEBPF, want: want,
			st:   with(ebpfDev, func(s *TunnelState) { s.Neigh = append(s.Neigh, vxlanDev.Neigh[0]) }),
			diff: []string{"stale neigh 192.168.2.11"}},
		{name: "ebpf with an FDB entry", mode: ModeEBPF, want: want,
			st:   with(ebpfDev, func(s *TunnelState) { s.FDB = vxlanDev.FDB[:1] }),
			diff: []string{"stale fdb 0e:70:c0:a8:02:0b"}},
		{name: "ebpf with a learnt neighbour", mode: ModeEBPF, want: want,
			st: with(ebpfDev, func(s *TunnelState) {
				s.Neigh = append(s.Neigh, TunnelNeigh{IP: netip.MustParseAddr("10.2.1.6"), MAC: "aa:bb:cc:dd:ee:ff", State: netlink.NUD_STALE})
			}),
			diff: []string{"unexpected neigh 10.2.1.6"}},
		{name: "ebpf device that resolves", mode: ModeEBPF, want: want,
			st:   with(ebpfDev, func(s *TunnelState) { s.NoARP, s.MAC = false, "0e:70:c0:a8:01:0b" }),
			diff: []string{"device MAC", "noarp entry not on the device's MAC", "not NOARP"}},
		{name: "ebpf without a device and nothing desired", mode: ModeEBPF, st: TunnelState{}},
		{name: "ebpf without a device", mode: ModeEBPF, st: TunnelState{}, want: want, diff: []string{"no podmesh_vxlan"}},
		{name: "vxlan as programmed", mode: ModeVXLAN, st: vxlanDev, want: want},
		{name: "vxlan missing an endpoint's entries", mode: ModeVXLAN, want: want,
			st:   with(vxlanDev, func(s *TunnelState) { s.Neigh, s.FDB = s.Neigh[:1], s.FDB[:1] }),
			diff: []string{"missing fdb 0e:70:c0:a8:02:0c dst 192.168.2.12", "missing neigh 192.168.2.12"}},
		{name: "vxlan with a withdrawn endpoint's entries", mode: ModeVXLAN,
			want: map[netip.Prefix]netip.Addr{netip.MustParsePrefix("10.2.1.0/24"): ep1}, st: vxlanDev,
			diff: []string{"stale fdb 0e:70:c0:a8:02:0c", "stale neigh 192.168.2.12"}},
		{name: "vxlan with an entry to the wrong endpoint", mode: ModeVXLAN, want: want,
			st:   with(vxlanDev, func(s *TunnelState) { s.FDB[1].Dst = ep1 }),
			diff: []string{"missing fdb 0e:70:c0:a8:02:0c dst 192.168.2.12", "stale fdb 0e:70:c0:a8:02:0c dst 192.168.2.11"}},
		{name: "native", mode: ModeNative, st: TunnelState{}, want: want},
		{name: "native with a tunnel device", mode: ModeNative, st: ebpfDev, want: want, diff: []string{"native mode has"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := compareTunnel(tc.mode, tc.st, tc.want)
			if len(got) != len(tc.diff) {
				t.Fatalf("differences %q, want %d matching %q", got, len(tc.diff), tc.diff)
			}
			for _, d := range tc.diff {
				if !slices.ContainsFunc(got, func(g string) bool { return strings.Contains(g, d) }) {
					t.Errorf("differences %q lack %q", got, d)
				}
			}
		})
	}
}

// The kernel reading: an ebpf-mode device as the agent creates it (external
// VXLAN, NOARP, the mesh MAC) in a namespace of the test's own, then an
// FDB and a neighbour entry such as a vxlan-mode agent would leave.
func TestReadTunnelStateSeesEntriesOnTheDevice(t *testing.T) {
	testutils.RequireRoot(t)
	ns := testutils.NewNetNS(t, "tunnelstate")
	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mac, _ := net.ParseMAC(bpf.DeviceMAC)
	dev := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: TunnelDevice, HardwareAddr: mac}, FlowBased: true, Port: TunnelPort}
	if err := h.LinkAdd(dev); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetARPOff(dev); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(dev); err != nil {
		t.Fatal(err)
	}
	st, err := ReadTunnelState(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	if d := compareTunnel(ModeEBPF, st, nil); len(d) > 0 {
		t.Fatalf("a fresh ebpf-mode device differs: %v (read %+v)", d, st)
	}
	ep := netip.MustParseAddr("192.168.2.11")
	peer := tunnelMAC(ep)
	idx := dev.Attrs().Index
	for _, n := range []*netlink.Neigh{
		{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: ep.AsSlice(), HardwareAddr: peer},
		{LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, IP: ep.AsSlice(), HardwareAddr: peer},
	} {
		if err := h.NeighSet(n); err != nil {
			t.Fatalf("add %+v: %v", n, err)
		}
	}
	if st, err = ReadTunnelState(ns.Path()); err != nil {
		t.Fatal(err)
	}
	d := compareTunnel(ModeEBPF, st, nil)
	if len(d) != 2 || !strings.Contains(d[0], "stale fdb "+peer.String()+" dst "+ep.String()) || !strings.Contains(d[1], "stale neigh "+ep.String()) {
		t.Fatalf("ebpf-mode check of a device with a vxlan-mode FDB and neighbour entry: %q (read %+v)", d, st)
	}
	if d := compareTunnel(ModeVXLAN, st, map[netip.Prefix]netip.Addr{netip.MustParsePrefix("10.2.1.0/24"): ep}); len(d) > 0 {
		t.Fatalf("the same entries are what vxlan mode programs, yet: %q", d)
	}
}
