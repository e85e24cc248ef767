package datapath_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

// TestDualStackPodsOverEitherUnderlayFamily proves the one code path serves
// both families: dual-stack pods on a1 (cluster A) and b1 (cluster B) reach
// each other over IPv4 and IPv6, with the tunnel over an IPv4 or an IPv6
// underlay. Native mode has no IPv6-prefix-over-IPv4-next-hop route, so it
// runs over the IPv6 underlay only (its IPv4 prefixes then use RTA_VIA).
func TestDualStackPodsOverEitherUnderlayFamily(t *testing.T) {
	testutils.RequireRoot(t)
	cases := []struct {
		mode       string
		underlay6  bool
		tunnelMTU  int
		prefixMode string
	}{
		{datapath.ModeNative, true, 1500, "v4 via inet6 and v6"},
		{datapath.ModeVXLAN, false, 1450, "v6 via derived link-local vtep"},
		{datapath.ModeVXLAN, true, 1430, "v4 via inet6 and v6"},
		{datapath.ModeEBPF, false, 1450, "v4 and v6 over v4"},
		{datapath.ModeEBPF, true, 1430, "v4 and v6 over v6"},
	}
	for _, tc := range cases {
		name := tc.mode + "/underlay-ipv4"
		if tc.underlay6 {
			name = tc.mode + "/underlay-ipv6"
		}
		t.Run(name, func(t *testing.T) {
			root := datapathtest.BPFRoot(t)
			lab := datapathtest.NewLab(t, datapathtest.LabOptions{IPv6: true})
			a1 := lab.AddNode("a1", "a", 1, "10.1.0.0/24")
			b1 := lab.AddNode("b1", "b", 2, "10.2.0.0/24")
			pa := a1.AddPod("10.1.0.10", "fd01:1::10")
			pb := b1.AddPod("10.2.0.10", "fd01:2::10")
			v6cidr := map[*datapathtest.Node]netip.Prefix{a1: netip.MustParsePrefix("fd01:1::/64"), b1: netip.MustParsePrefix("fd01:2::/64")}
			underlay := func(n *datapathtest.Node) netip.Addr {
				if tc.underlay6 {
					return n.IP6
				}
				return n.IP
			}
			m := &mesh{t: t, mode: tc.mode, lab: lab, desired: map[*datapathtest.Node]*datapath.Desired{},
				bpfRoot: map[*datapathtest.Node]string{}, running: map[*datapathtest.Node]*running{}}
			for _, pair := range [][2]*datapathtest.Node{{a1, b1}, {b1, a1}} {
				n, o := pair[0], pair[1]
				d := datapath.NewDesired()
				d.SetCluster(o.Cluster, append(clusterCIDRs(o.Cluster), v6cidr[o]), []datapath.Entry{
					{Prefix: o.PodCIDR, TunnelEndpoint: underlay(o), ClusterID: o.ClusterID, Cluster: o.Cluster},
					{Prefix: v6cidr[o], TunnelEndpoint: underlay(o), ClusterID: o.ClusterID, Cluster: o.Cluster},
				})
				d.AllowPrune()
				m.desired[n] = d
				m.bpfRoot[n] = root + "/" + n.Name
			}
			for _, n := range []*datapathtest.Node{a1, b1} {
				cfg := m.config(n)
				cfg.LocalIP = underlay(n)
				r, err := datapath.New(cfg)
				require.NoError(t, err)
				m.runReconciler(n, r)
			}
			for _, n := range []*datapathtest.Node{a1, b1} {
				m.waitApplied(n)
				s := m.running[n].r.Status()
				assert.Empty(t, s.Failed, "%s: %v", n.Name, s.Errors)
				v, err := n.NS.ReadSysctl("net.ipv6.conf.all.forwarding")
				require.NoError(t, err)
				assert.Equal(t, "1", v, "IPv6 forwarding enabled on %s", n.Name)
			}
			datapathtest.StartIdentServer(t, pa, identPort)
			datapathtest.StartIdentServer(t, pb, identPort)
			for _, fam := range []struct{ src, dst netip.Addr }{{pa.IPs[0], pb.IPs[0]}, {pa.IPs[1], pb.IPs[1]}} {
				got, err := datapathtest.TCPIdent(pa, netip.AddrPortFrom(fam.dst, identPort), dialTimeout)
				require.NoError(t, err, "tcp %s -> %s (%s)", fam.src, fam.dst, tc.prefixMode)
				assert.Equal(t, fam.src, got)
				got, err = datapathtest.UDPIdent(pb, netip.AddrPortFrom(fam.src, identPort), dialTimeout)
				require.NoError(t, err, "udp %s -> %s", fam.dst, fam.src)
				assert.Equal(t, fam.dst, got)
			}
			// Every route, neighbour and FDB shape of this family mix reads
			// back as it was written.
			m.assertFullPassWritesNothing(a1, b1)

			rs := routesTo(t, a1, v6cidr[b1])
			require.Len(t, rs, 1)
			assert.Equal(t, tc.tunnelMTU, rs[0].MTU, "IPv6 prefix route MTU")
		})
	}
}
