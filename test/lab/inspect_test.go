package lab

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

// The lab's inspectors read what podmesh's datapath really programs in
// every mode (no lab, no agent: the datapath package's reconciler on a
// node of its own test topology): checkNode finds a converged node equal to
// its remote's prefixes, names the mismatch when an endpoint differs, and
// in vxlan mode reports a neighbour or FDB entry no prefix needs, whose
// withdrawal the route watch sees.
func TestCheckNodeReadsWhatEveryModeProgrammes(t *testing.T) {
	testutils.RequireRoot(t)
	for _, mode := range []string{ModeEBPF, ModeVXLAN, ModeNative} {
		t.Run(mode, func(t *testing.T) {
			tl := datapathtest.NewLab(t, datapathtest.LabOptions{})
			a1 := tl.AddNode("a1", "a", 1, "10.1.0.0/24")
			b1 := tl.AddNode("b1", "b", 2, "10.2.0.0/24")
			remote := &Cluster{Name: "b", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
			want := map[netip.Prefix]netip.Addr{b1.PodCIDR: b1.IP}
			if mode != ModeNative { // native mode routes IPv6 only over an IPv6 underlay
				remote.PodCIDRs = append(remote.PodCIDRs, netip.MustParsePrefix("fd00:2::/48"))
				want[netip.MustParsePrefix("fd00:2:0:1::/64")] = b1.IP
			}
			var entries []datapath.Entry
			for p, ep := range want {
				entries = append(entries, datapath.Entry{Prefix: p, TunnelEndpoint: ep, ClusterID: 2, Cluster: "b"})
			}
			d := datapath.NewDesired()
			d.SetCluster("b", remote.PodCIDRs, entries)
			d.AllowPrune()
			n := &Node{Name: "a1", NetNS: a1.NS.Path, Mode: mode, BPFRoot: datapathtest.BPFRoot(t) + "/a1"}
			r, err := datapath.New(datapath.Config{Mode: mode, LocalIP: a1.IP, LocalClusterID: 1, Desired: d,
				NetNS: n.NetNS, BPFRoot: n.BPFRoot, RecheckInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = r.Run(ctx)
			}()
			t.Cleanup(func() {
				cancel()
				<-done
			})
			remotes := []*Cluster{remote}
			if err := waitFor(ctx, 10*time.Second, 20*time.Millisecond, "datapath converged", func() (bool, error) {
				err := checkNode(n, remotes, want)
				return err == nil, err
			}); err != nil {
				t.Fatal(err)
			}

			moved := map[netip.Prefix]netip.Addr{}
			for p := range want {
				moved[p] = netip.MustParseAddr("192.168.77.99")
			}
			err = checkNode(n, remotes, moved)
			if err == nil || !strings.Contains(err.Error(), "192.168.77.99") {
				t.Errorf("node programmed for %s, checked against endpoint 192.168.77.99: %v", b1.IP, err)
			}
			if mode != ModeVXLAN {
				return
			}

			w, err := WatchPrefixes(n)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			h, err := netlinkIn(n.NetNS)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			dev, err := h.LinkByName(TunnelDevice)
			if err != nil {
				t.Fatal(err)
			}
			stray := netip.MustParseAddr("192.168.77.50")
			neigh := &netlink.Neigh{LinkIndex: dev.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: net.IP(stray.AsSlice()), HardwareAddr: tunnelMAC(stray)}
			if err := h.NeighAdd(neigh); err != nil {
				t.Fatal(err)
			}
			err = checkNode(n, remotes, want)
			if err == nil || !strings.Contains(err.Error(), "extra [neigh 192.168.77.50") {
				t.Errorf("stray neighbour entry on %s not reported as extra: %v", TunnelDevice, err)
			}
			if err := h.NeighDel(neigh); err != nil {
				t.Fatal(err)
			}
			if _, err := w.WaitFor(ctx, 5*time.Second, func(ev RouteEvent) bool {
				return !ev.Added && ev.Kind == EventNeigh && ev.Prefix == netip.PrefixFrom(stray, 32)
			}); err != nil {
				t.Errorf("withdrawal of the stray neighbour entry not seen: %v", err)
			}
		})
	}
}
