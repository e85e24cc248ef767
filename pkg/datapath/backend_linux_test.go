package datapath

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/bpf"
	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

// genOf names want's content as the reconciler's generation does: the same
// content, the same generation, so a backend reuses what it derived from
// an unchanged set (and must still see the kernel drift under it).
func genOf(want map[netip.Prefix]Entry) uint64 {
	key := fmt.Sprint(want) // fmt prints maps sorted by key
	if g, ok := generations[key]; ok {
		return g
	}
	generations[key] = uint64(len(generations) + 1)
	return generations[key]
}

var generations = map[string]uint64{}

// fullPass runs a backend's full-pass operations as the reconciler does:
// setup, read, update with the view, cluster routes, prune.
func fullPass(t *testing.T, b backend, want map[netip.Prefix]Entry, cidrs []netip.Prefix, allowed bool) (writes int, failed map[netip.Prefix]error) {
	t.Helper()
	require.NoError(t, b.setup())
	gen := genOf(want)
	v, err := b.read(want, gen)
	require.NoError(t, err)
	writes, failed = b.update(v, want, gen)
	routed, err := b.clusterRoutes(cidrs, allowed)
	require.NoError(t, err)
	removed, err := b.prune(v, want, allowed)
	require.NoError(t, err)
	return writes + routed + removed, failed
}

// Backend-level contract, per mode, in a namespace of its own: a full pass
// is idempotent (a second identical one writes nothing), repairs what was
// removed by hand, deletes nothing it may not, removes only podmesh objects
// when it may; an incremental update and delete leave the kernel exactly as
// a full pass would; deleting what is already gone is success; a foreign
// route holding a wanted prefix is reported and never overwritten.
func TestBackendFullPassIsIdempotentAndPrunesOnlyItsOwn(t *testing.T) {
	testutils.RequireRoot(t)
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
			cidrs := []netip.Prefix{mustPrefix("10.2.0.0/16")}
			// podmesh routes expected per wanted prefix set: per prefix,
			// except in ebpf mode (one per cluster CIDR).
			routesFor := func(want map[netip.Prefix]Entry) int {
				if mode == ModeEBPF {
					return len(cidrs)
				}
				return len(want)
			}

			eth, err := h.LinkByName("eth0")
			require.NoError(t, err)
			foreign := netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 99, 0, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.ParseIP("192.168.77.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC}
			require.NoError(t, h.RouteAdd(&foreign))

			want := map[netip.Prefix]Entry{
				mustPrefix("10.2.0.0/24"):  {Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: peer.IP, ClusterID: 2, Cluster: "b"},
				mustPrefix("10.2.5.77/32"): {Prefix: mustPrefix("10.2.5.77/32"), TunnelEndpoint: peer.IP, ClusterID: 2, Cluster: "b"},
			}
			writes, failed := fullPass(t, b, want, cidrs, false)
			require.Empty(t, failed)
			assert.Positive(t, writes)

			writes, _ = fullPass(t, b, want, cidrs, false)
			assert.Zero(t, writes, "an identical second full pass changes nothing")

			ours, _, err := listRoutes(r.rb)
			require.NoError(t, err)
			require.Len(t, ours, routesFor(want))
			// The lean dump decodes what the general decoder does, in
			// every field podmesh compares.
			all, err := h.RouteListFiltered(unix.AF_UNSPEC, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
			require.NoError(t, err)
			decoded := 0
			for _, vr := range all {
				p, ok := routeKey(vr)
				if !ok || vr.Protocol != RouteProtocol {
					continue
				}
				decoded++
				lr := ours[p]
				assert.Equal(t, vr.Gw.String(), lr.Gw.String(), "%s gateway", p)
				assert.Equal(t, viaAddr(vr.Via), viaAddr(lr.Via), "%s via", p)
				assert.Equal(t, []any{vr.LinkIndex, vr.MTU, vr.Scope, vr.Type, vr.Flags, vr.Table, vr.Family}, []any{lr.LinkIndex, lr.MTU, lr.Scope, lr.Type, lr.Flags, lr.Table, lr.Family}, "%s", p)
			}
			assert.Equal(t, len(ours), decoded)
			// Remove one object behind the backend's back.
			if mode == ModeEBPF {
				_, err := b.(*ebpfBackend).dp.Apply(nil, []netip.Prefix{mustPrefix("10.2.5.77/32")})
				require.NoError(t, err)
			} else {
				gone := ours[mustPrefix("10.2.5.77/32")]
				require.Empty(t, deleteRoutes(r.rb, []netlink.Route{gone}))
				require.Empty(t, deleteRoutes(r.rb, []netlink.Route{gone}), "deleting a route that is already gone is success")
			}
			writes, _ = fullPass(t, b, want, cidrs, false)
			assert.Equal(t, 1, writes, "the full pass repairs exactly the missing object")
			if mode != ModeEBPF {
				// Changed behind the backend's back: same prefix, same
				// protocol, another MTU; only comparing the routes'
				// fields (their signatures' digest) notices it.
				changed := ours[mustPrefix("10.2.0.0/24")]
				changed.MTU = 1280
				require.NoError(t, h.RouteReplace(&changed))
				writes, _ = fullPass(t, b, want, cidrs, false)
				assert.Equal(t, 1, writes, "the full pass repairs exactly the changed route")
				now, _, err := listRoutes(r.rb)
				require.NoError(t, err)
				assert.Equal(t, ours[mustPrefix("10.2.0.0/24")].MTU, now[mustPrefix("10.2.0.0/24")].MTU)
			}
			if mode == ModeEBPF {
				// Changed behind the backend's back: the entry is the
				// same prefix with another value, so only comparing
				// values (the dump with the desired set's image) notices
				// it.
				dp := b.(*ebpfBackend).dp
				_, err := dp.Apply([]bpf.Entry{{Prefix: mustPrefix("10.2.5.77/32"), TunnelEndpoint: mustAddr("192.168.77.9"), ClusterID: 2}}, nil)
				require.NoError(t, err)
				writes, _ = fullPass(t, b, want, cidrs, false)
				assert.Equal(t, 1, writes, "the full pass repairs exactly the changed object")
				es, err := dp.Entries()
				require.NoError(t, err)
				assert.Contains(t, es, bpf.Entry{Prefix: mustPrefix("10.2.5.77/32"), TunnelEndpoint: peer.IP, ClusterID: 2})
			}

			writes, _ = fullPass(t, b, map[netip.Prefix]Entry{}, cidrs, false)
			assert.Zero(t, writes, "nothing is removed while prune is not allowed")
			ours, _, err = listRoutes(r.rb)
			require.NoError(t, err)
			assert.Len(t, ours, routesFor(want))

			if mode == ModeEBPF {
				// An entry another writer left that this version cannot
				// decode (family 42) is podmesh's map's, so prune removes it.
				m, err := ebpf.LoadPinnedMap(filepath.Join(root, "ipcache"), nil)
				require.NoError(t, err)
				key := make([]byte, m.KeySize())
				binary.NativeEndian.PutUint32(key, 32+16)
				key[4] = 42
				require.NoError(t, m.Put(key, make([]byte, m.ValueSize())))
				m.Close()
			}
			writes, _ = fullPass(t, b, map[netip.Prefix]Entry{}, nil, true)
			assert.Positive(t, writes)
			ours, foreignRoutes, err := listRoutes(r.rb)
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
				es, undecodable, err := b.(*ebpfBackend).dp.Read()
				require.NoError(t, err)
				assert.Empty(t, es, "ipcache pruned")
				assert.Zero(t, undecodable, "the undecodable entry pruned too")
			}

			// Incremental: add, change, remove without reading the kernel.
			d1 := map[netip.Prefix]Entry{mustPrefix("10.2.0.0/24"): want[mustPrefix("10.2.0.0/24")]}
			fullPass(t, b, d1, cidrs, true)
			third := lab.AddNode("n3", "b", 2, "10.2.1.0/24")
			d2 := map[netip.Prefix]Entry{
				mustPrefix("10.2.0.0/24"): {Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: third.IP, ClusterID: 2, Cluster: "b"},
				mustPrefix("10.2.1.0/24"): {Prefix: mustPrefix("10.2.1.0/24"), TunnelEndpoint: third.IP, ClusterID: 2, Cluster: "b"},
			}
			inD1 := func(p netip.Prefix) bool { _, ok := d1[p]; return ok }
			_, failed = b.write(slices.Collect(maps.Values(d2)), genOf(d2), inD1)
			require.Empty(t, failed)
			writes, _ = fullPass(t, b, d2, cidrs, false)
			if mode == ModeVXLAN {
				assert.Equal(t, 2, writes, "the incremental update left the kernel as a full pass would, but for the neighbour and FDB entry of the endpoint no prefix uses any more (prune's)")
			} else {
				assert.Zero(t, writes, "the incremental update left the kernel exactly as a full pass would")
			}
			require.Empty(t, b.delete([]Entry{d2[mustPrefix("10.2.1.0/24")]}))
			require.Empty(t, b.delete([]Entry{d2[mustPrefix("10.2.1.0/24")]}), "deleting what is already gone is success")
			writes, _ = fullPass(t, b, map[netip.Prefix]Entry{mustPrefix("10.2.0.0/24"): d2[mustPrefix("10.2.0.0/24")]}, cidrs, true)
			assert.Zero(t, writes, "the incremental delete left the kernel exactly as a full prune would")

			if mode != ModeEBPF {
				// A foreign route holding a wanted prefix: the incremental
				// update fails exclusively instead of overwriting it, and
				// the full pass reports it.
				clash := netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 2, 9, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.ParseIP("192.168.77.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC}
				require.NoError(t, h.RouteAdd(&clash))
				d3 := map[netip.Prefix]Entry{mustPrefix("10.2.9.0/24"): {Prefix: mustPrefix("10.2.9.0/24"), TunnelEndpoint: peer.IP, ClusterID: 2, Cluster: "b"}}
				_, failed = b.write(slices.Collect(maps.Values(d3)), 0, func(netip.Prefix) bool { return false })
				assert.ErrorIs(t, failed[mustPrefix("10.2.9.0/24")], errRouteExists)
				_, failed = fullPass(t, b, d3, cidrs, true)
				assert.ErrorIs(t, failed[mustPrefix("10.2.9.0/24")], errForeignRoute)
				_, foreignRoutes, err = listRoutes(r.rb)
				require.NoError(t, err)
				assert.Equal(t, netlink.RouteProtocol(unix.RTPROT_STATIC), foreignRoutes[mustPrefix("10.2.9.0/24")].Protocol, "the foreign route was not overwritten")
			} else {
				// A foreign route holding a cluster CIDR is reported, not
				// replaced.
				clash := netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 3, 0, 0), Mask: net.CIDRMask(16, 32)}, Gw: net.ParseIP("192.168.77.200"), LinkIndex: eth.Attrs().Index, Protocol: unix.RTPROT_STATIC}
				require.NoError(t, h.RouteAdd(&clash))
				require.NoError(t, b.setup())
				_, err = b.clusterRoutes([]netip.Prefix{mustPrefix("10.3.0.0/16")}, true)
				assert.ErrorIs(t, err, errForeignRoute)
				_, foreignRoutes, err = listRoutes(r.rb)
				require.NoError(t, err)
				assert.Equal(t, netlink.RouteProtocol(unix.RTPROT_STATIC), foreignRoutes[mustPrefix("10.3.0.0/16")].Protocol)
			}
		})
	}
}
