package datapath

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/bpf"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

// Backend-level contract, per mode, in a namespace of its own: sync is
// idempotent (a second identical sync writes nothing), repairs what was
// removed by hand, deletes nothing it may not, removes only podmesh objects
// when it may, and deleting a route that is already gone is success.
func TestBackendSyncIsIdempotentAndPrunesOnlyItsOwn(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode: privileged datapath test")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces, links and routes")
	}
	for _, mode := range []string{ModeNative, ModeVXLAN, ModeEBPF} {
		t.Run(mode, func(t *testing.T) {
			root := datapathtest.BPFRoot(t) // never the host's default
			lab := datapathtest.NewLab(t, datapathtest.LabOptions{})
			node := lab.AddNode("n1", "a", 1, "10.1.0.0/24")
			peer := lab.AddNode("n2", "b", 2, "10.2.0.0/24")
			r, err := New(Config{Mode: mode, LocalIP: node.IP, NetNS: node.NS.Path, BPFRoot: root, LocalClusterID: 1, Desired: NewDesired()})
			require.NoError(t, err)
			t.Cleanup(func() {
				r.b.close()
				r.closeHandles()
			})
			b := r.b
			h := node.NS.NL
			never := func(netip.Prefix) bool { return false }
			always := func(netip.Prefix) bool { return true }

			eth, err := h.LinkByName("eth0")
			require.NoError(t, err)
			foreign := netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 99, 0, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.ParseIP("192.168.77.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC}
			require.NoError(t, h.RouteAdd(&foreign))

			want := map[netip.Prefix]Entry{
				mustPrefix("10.2.0.0/24"):  {Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: peer.IP, ClusterID: 2, Cluster: "b"},
				mustPrefix("10.2.5.77/32"): {Prefix: mustPrefix("10.2.5.77/32"), TunnelEndpoint: peer.IP, ClusterID: 2, Cluster: "b"},
			}
			res := b.sync(want, never)
			require.NoError(t, res.err)
			require.Empty(t, res.failed)
			assert.Positive(t, res.writes)

			res = b.sync(want, never)
			require.NoError(t, res.err)
			assert.Zero(t, res.writes, "an identical second sync changes nothing")

			ours, _, err := listRoutes(h)
			require.NoError(t, err)
			require.Len(t, ours, 2)
			gone := ours[mustPrefix("10.2.5.77/32")]
			require.NoError(t, deleteRoute(h, gone))
			require.NoError(t, deleteRoute(h, gone), "deleting a route that is already gone is success")

			res = b.sync(want, never)
			require.NoError(t, res.err)
			assert.Equal(t, 1, res.writes, "the sync repairs exactly the missing route")

			res = b.sync(map[netip.Prefix]Entry{}, never)
			require.NoError(t, res.err)
			assert.Empty(t, res.removed, "nothing is removed while deletion is not allowed")
			ours, foreignRoutes, err := listRoutes(h)
			require.NoError(t, err)
			assert.Len(t, ours, 2)

			res = b.sync(map[netip.Prefix]Entry{}, always)
			require.NoError(t, res.err)
			assert.Len(t, res.removed, 2)
			ours, foreignRoutes, err = listRoutes(h)
			require.NoError(t, err)
			assert.Empty(t, ours, "prune removed every podmesh route")
			assert.Contains(t, foreignRoutes, mustPrefix("10.99.0.0/24"), "prune kept the foreign route")
			if mode == ModeVXLAN {
				vx, err := h.LinkByName(DeviceName)
				require.NoError(t, err)
				ns, err := h.NeighList(vx.Attrs().Index, unix.AF_INET)
				require.NoError(t, err)
				fs, err := h.NeighList(vx.Attrs().Index, unix.AF_BRIDGE)
				require.NoError(t, err)
				for _, n := range append(ns, fs...) {
					assert.Zero(t, n.State&netlink.NUD_PERMANENT, "no permanent neighbour/fdb entry left: %v", n)
				}
			}
			if mode == ModeEBPF {
				es, err := b.(*ebpfBackend).dp.Entries()
				require.NoError(t, err)
				assert.Empty(t, es, "ipcache pruned")
			}

			// Delta passes: add, change, remove without re-reading the kernel.
			d1 := map[netip.Prefix]Entry{mustPrefix("10.2.0.0/24"): want[mustPrefix("10.2.0.0/24")]}
			res = b.sync(d1, always)
			require.NoError(t, res.err)
			third := lab.AddNode("n3", "b", 2, "10.2.1.0/24")
			d2 := map[netip.Prefix]Entry{
				mustPrefix("10.2.0.0/24"): {Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: third.IP, ClusterID: 2, Cluster: "b"},
				mustPrefix("10.2.1.0/24"): {Prefix: mustPrefix("10.2.1.0/24"), TunnelEndpoint: third.IP, ClusterID: 2, Cluster: "b"},
			}
			res = b.apply(diffDesired(d1, d2))
			require.NoError(t, res.err)
			require.Empty(t, res.failed)
			require.False(t, res.needFull)
			assert.Zero(t, b.sync(d2, never).writes, "the delta left the kernel exactly as a full sync would")
			res = b.apply(diffDesired(d2, d1))
			require.NoError(t, res.err)
			assert.Equal(t, []netip.Prefix{mustPrefix("10.2.1.0/24")}, res.removed)
			assert.Zero(t, b.sync(d1, always).writes, "the delta removal left the kernel exactly as a full prune would")
			if mode == ModeEBPF {
				// A delta deletes exactly the removed prefixes from the
				// ipcache: an entry the desired set never had stays until a
				// full pass may prune it.
				dp := b.(*ebpfBackend).dp
				other := bpf.Entry{Prefix: mustPrefix("10.2.77.0/24"), TunnelEndpoint: peer.IP, ClusterID: 2}
				_, err := dp.Apply([]bpf.Entry{other}, nil)
				require.NoError(t, err)
				res = b.apply(diffDesired(d1, d2))
				require.NoError(t, res.err)
				require.Empty(t, res.failed)
				res = b.apply(diffDesired(d2, d1))
				require.NoError(t, res.err)
				assert.Equal(t, []netip.Prefix{mustPrefix("10.2.1.0/24")}, res.removed)
				es, err := dp.Entries()
				require.NoError(t, err)
				assert.ElementsMatch(t, []bpf.Entry{ipcacheEntry(d1[mustPrefix("10.2.0.0/24")]), other}, es)
				assert.Equal(t, 1, b.sync(d1, always).writes, "the full pass prunes it")
			}

			// A foreign route holding a wanted prefix is reported, not
			// replaced: the delta pass asks for a full pass, which reports it.
			clash0 := netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 2, 8, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.ParseIP("192.168.77.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC}
			require.NoError(t, h.RouteAdd(&clash0))
			d3 := map[netip.Prefix]Entry{mustPrefix("10.2.8.0/24"): {Prefix: mustPrefix("10.2.8.0/24"), TunnelEndpoint: peer.IP, ClusterID: 2, Cluster: "b"}}
			res = b.apply(diffDesired(d1, d3))
			assert.True(t, res.needFull)
			_, foreignRoutes, err = listRoutes(h)
			require.NoError(t, err)
			assert.Equal(t, netlink.RouteProtocol(unix.RTPROT_STATIC), foreignRoutes[mustPrefix("10.2.8.0/24")].Protocol, "the delta did not overwrite the foreign route")

			// A foreign route holding a wanted prefix is reported, not replaced.
			clash := netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 2, 9, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.ParseIP("192.168.77.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC}
			require.NoError(t, h.RouteAdd(&clash))
			res = b.sync(map[netip.Prefix]Entry{mustPrefix("10.2.9.0/24"): {Prefix: mustPrefix("10.2.9.0/24"), TunnelEndpoint: peer.IP, ClusterID: 2, Cluster: "b"}}, always)
			require.NoError(t, res.err)
			assert.Contains(t, res.failed, mustPrefix("10.2.9.0/24"))
			_, foreignRoutes, err = listRoutes(h)
			require.NoError(t, err)
			assert.Equal(t, netlink.RouteProtocol(unix.RTPROT_STATIC), foreignRoutes[mustPrefix("10.2.9.0/24")].Protocol)
		})
	}
}
