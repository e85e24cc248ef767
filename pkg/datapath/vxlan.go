package datapath

import (
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vxlanBackend is the kernel-only tunnel: one VXLAN device podmesh_vxlan
// (VNI, UDP port, local address, no learning), and per remote prefix the
// objects
//
//	<prefix> via <vtep> dev podmesh_vxlan onlink proto podmesh mtu <underlay-overhead>
//	neigh <vtep> lladdr TunnelMAC(endpoint) dev podmesh_vxlan permanent
//	fdb TunnelMAC(endpoint) dev podmesh_vxlan dst <endpoint> self permanent
//
// where vtep is the remote node's underlay address itself for IPv4, and a
// link-local address derived from its MAC for IPv6 gateways (see vtep()).
// Neighbour and FDB entries are shared by every prefix of one endpoint:
// update sets them (NeighSet replaces, so repeating one is harmless), delete
// removes only the route, and prune removes the entries no route uses.
type vxlanBackend struct {
	base
	linkIndex int // podmesh_vxlan as of the last setup
}

func (b *vxlanBackend) mode() string { return ModeVXLAN }

func (b *vxlanBackend) deviceMTU() int { return routeMTU(ModeVXLAN, b.mtu, b.local) }

func (b *vxlanBackend) spec(e Entry) routeSpec {
	return specFor(e, routeParams{mode: ModeVXLAN, linkIndex: b.linkIndex, mtu: b.deviceMTU()})
}

func (b *vxlanBackend) wantDevice() *netlink.Vxlan {
	return &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         DeviceName,
			MTU:          b.deviceMTU(),
			HardwareAddr: TunnelMAC(b.local),
		},
		VxlanId:  VNI,
		SrcAddr:  b.local.AsSlice(),
		Port:     b.port,
		Learning: false,
	}
}

// vxlanDeviceCompatible reports whether an existing device can be kept (and
// fixed in place) rather than recreated.
func vxlanDeviceCompatible(want, have *netlink.Vxlan) bool {
	return !have.FlowBased && have.VxlanId == want.VxlanId && have.Port == want.Port &&
		ipToAddr(have.SrcAddr) == ipToAddr(want.SrcAddr) && !have.Learning
}

func (b *vxlanBackend) setup() error {
	wd := b.wantDevice()
	link, err := ensureDevice(b.h, b.log, wd, func(l netlink.Link) bool {
		vx, ok := l.(*netlink.Vxlan)
		return ok && vxlanDeviceCompatible(wd, vx)
	}, false)
	if err != nil {
		return err
	}
	b.linkIndex = link.Attrs().Index
	return nil
}

// vxlanView is a full pass's read: podmesh's routes, and the neighbour and
// FDB entries on podmesh_vxlan.
type vxlanView struct {
	*routeView
	neigh map[netip.Addr]netlink.Neigh // by gateway
	fdb   map[string]netlink.Neigh     // permanent entries, by MAC
}

func (b *vxlanBackend) read(map[netip.Prefix]Entry, uint64) (kernelView, error) {
	rv, err := readRoutes(b.rb)
	if err != nil {
		return nil, err
	}
	v := &vxlanView{routeView: rv, neigh: make(map[netip.Addr]netlink.Neigh), fdb: make(map[string]netlink.Neigh)}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		ns, err := retryDump(func() ([]netlink.Neigh, error) { return b.h.NeighList(b.linkIndex, fam) })
		if err != nil {
			return nil, fmt.Errorf("list neighbours of %s: %w", DeviceName, err)
		}
		for _, n := range ns {
			v.neigh[ipToAddr(n.IP)] = n
		}
	}
	fdbs, err := retryDump(func() ([]netlink.Neigh, error) { return b.h.NeighList(b.linkIndex, unix.AF_BRIDGE) })
	if err != nil {
		return nil, fmt.Errorf("list fdb of %s: %w", DeviceName, err)
	}
	for _, n := range fdbs {
		if n.State&netlink.NUD_PERMANENT != 0 && len(n.HardwareAddr) == 6 {
			v.fdb[n.HardwareAddr.String()] = n
		}
	}
	return v, nil
}

func (b *vxlanBackend) update(kv kernelView, want map[netip.Prefix]Entry, _ uint64) (int, map[netip.Prefix]error) {
	v := kv.(*vxlanView)
	written, pending := b.setPeers(v, maps.Values(want))
	rw, failed := updateRoutes(b.rb, v.routeView, want, b.spec)
	for p, err := range pending {
		failed[p] = errors.Join(err, failed[p])
	}
	return written + rw, failed
}

func (b *vxlanBackend) write(objs []Entry, _ uint64, ours func(netip.Prefix) bool) (int, map[netip.Prefix]error) {
	written, pending := b.setPeers(nil, slices.Values(objs))
	rw, failed := writeRoutes(b.rb, objs, b.spec, ours)
	for p, err := range pending {
		failed[p] = errors.Join(err, failed[p])
	}
	return written + rw, failed
}

// setPeers makes the FDB and neighbour entries of es match (v: a full
// pass's read; nil: write them all) and returns how many it wrote and the
// prefixes whose peer failed.
func (b *vxlanBackend) setPeers(v *vxlanView, es iter.Seq[Entry]) (int, map[netip.Prefix]error) {
	written := 0
	// FDB and neighbour entries first (once per endpoint and gateway), so a
	// route never leads to an unresolved gateway. Prefixes share a few
	// endpoints: the work and its outcome are per endpoint and family.
	fdbErr := make(map[netip.Addr]error)
	neighErr := make(map[netip.Addr]error)
	peerErr := make(map[peerKey]error)
	pending := make(map[netip.Prefix]error)
	for e := range es {
		k := peerKeyOf(e)
		err, done := peerErr[k]
		if !done {
			var n int
			n, err = b.setPeer(v, e, fdbErr, neighErr)
			written += n
			peerErr[k] = err
		}
		if err != nil {
			pending[e.Prefix] = err
		}
	}
	return written, pending
}

// peerKey names what a prefix's route needs on the device: the FDB entry of
// its endpoint and the neighbour entry of its gateway, which depends on the
// endpoint and the prefix's family (vtep).
type peerKey struct {
	endpoint netip.Addr
	v4       bool
}

func peerKeyOf(e Entry) peerKey {
	return peerKey{endpoint: e.TunnelEndpoint, v4: e.Prefix.Addr().Is4()}
}

// setPeer makes the FDB entry of e's endpoint and the neighbour entry of
// its gateway match (each once per call of update: fdbErr and neighErr hold
// the outcomes so far) and returns how many it wrote and their error.
func (b *vxlanBackend) setPeer(v *vxlanView, e Entry, fdbErr, neighErr map[netip.Addr]error) (int, error) {
	written := 0
	if _, done := fdbErr[e.TunnelEndpoint]; !done {
		f := desiredFDB(e.TunnelEndpoint, b.linkIndex)
		var err error
		if h, ok := v.fdbOf(f); !ok || ipToAddr(h.IP) != e.TunnelEndpoint {
			written++
			if err = b.h.NeighSet(&f); err != nil {
				err = fmt.Errorf("set fdb %s dst %s: %w", f.HardwareAddr, e.TunnelEndpoint, err)
			}
		}
		fdbErr[e.TunnelEndpoint] = err
	}
	n := desiredNeigh(e, b.linkIndex)
	gw := ipToAddr(n.IP)
	if _, done := neighErr[gw]; !done {
		var err error
		if h, ok := v.neighOf(gw); !ok || !neighMatches(n, h) {
			written++
			if err = b.h.NeighSet(&n); err != nil {
				err = fmt.Errorf("set neighbour %s lladdr %s: %w", gw, n.HardwareAddr, err)
			}
		}
		neighErr[gw] = err
	}
	return written, errors.Join(fdbErr[e.TunnelEndpoint], neighErr[gw])
}

func (v *vxlanView) fdbOf(f netlink.Neigh) (netlink.Neigh, bool) {
	if v == nil {
		return netlink.Neigh{}, false
	}
	h, ok := v.fdb[f.HardwareAddr.String()]
	return h, ok
}

func (v *vxlanView) neighOf(gw netip.Addr) (netlink.Neigh, bool) {
	if v == nil {
		return netlink.Neigh{}, false
	}
	h, ok := v.neigh[gw]
	return h, ok
}

func (b *vxlanBackend) delete(es []Entry) map[netip.Prefix]error {
	return deleteRoutes(b.rb, specRoutes(es, b.spec))
}

// prune removes podmesh routes want does not hold (once allowed), then the
// permanent neighbour and FDB entries on podmesh_vxlan that neither a wanted
// prefix nor a remaining podmesh route uses: nothing can lead to them.
func (b *vxlanBackend) prune(kv kernelView, want map[netip.Prefix]Entry, allowed bool) (int, error) {
	v := kv.(*vxlanView)
	removed := 0
	var errs []error
	if allowed {
		n, err := pruneRoutes(b.rb, v.routeView, want)
		removed += n
		errs = append(errs, err)
	}
	usedGW := make(map[netip.Addr]bool)
	usedMAC := make(map[string]bool)
	peers := make(map[peerKey]Entry) // prefixes share a few endpoints
	for _, e := range want {
		if k := peerKeyOf(e); !hasKey(peers, k) {
			peers[k] = e
		}
	}
	for _, e := range peers {
		gw, _ := vtep(e.Prefix, e.TunnelEndpoint)
		usedGW[gw] = true
		usedMAC[TunnelMAC(e.TunnelEndpoint).String()] = true
	}
	if !v.synced {
		// Routes beyond the wanted ones (prune not allowed yet, or
		// failed) may still lead to a gateway.
		v.index()
		for _, r := range v.ours {
			if r.LinkIndex == b.linkIndex {
				usedGW[routeGateway(r)] = true
			}
		}
	}
	for gw, n := range v.neigh {
		if usedGW[gw] {
			usedMAC[n.HardwareAddr.String()] = true
			continue
		}
		if n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		removed++
		if err := b.h.NeighDel(&n); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete neighbour %s: %w", gw, err))
		}
	}
	for mac, n := range v.fdb {
		if usedMAC[mac] {
			continue
		}
		removed++
		if err := b.h.NeighDel(&n); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete fdb %s: %w", mac, err))
		}
	}
	return removed, errors.Join(errs...)
}

func routeGateway(r netlink.Route) netip.Addr {
	if a := ipToAddr(r.Gw); a.IsValid() {
		return a
	}
	return viaAddr(r.Via)
}

func hasKey[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}
