package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vxlanBackend is the kernel-only tunnel: one VXLAN device podmesh_vxlan
// (VNI, UDP port, local address, no learning), and per remote prefix
//
//	<prefix> via <vtep> dev podmesh_vxlan onlink proto podmesh mtu <underlay-overhead>
//	neigh <vtep> lladdr TunnelMAC(endpoint) dev podmesh_vxlan permanent
//	fdb TunnelMAC(endpoint) dev podmesh_vxlan dst <endpoint> self permanent
//
// where vtep is the remote node's underlay address itself for IPv4, and a
// link-local address derived from its MAC for IPv6 gateways (see vtep()).
type vxlanBackend struct {
	base
	linkIndex int // podmesh_vxlan as of the last full sync
}

func (b *vxlanBackend) mode() string { return ModeVXLAN }

func (b *vxlanBackend) deviceMTU() int { return routeMTU(ModeVXLAN, b.mtu, b.local) }

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

func (b *vxlanBackend) sync(want map[netip.Prefix]Entry, canDelete func(netip.Prefix) bool) syncResult {
	wd := b.wantDevice()
	link, err := ensureDevice(b.h, b.log, wd, func(l netlink.Link) bool {
		vx, ok := l.(*netlink.Vxlan)
		return ok && vxlanDeviceCompatible(wd, vx)
	}, false)
	if err != nil {
		return syncResult{err: err}
	}
	idx := link.Attrs().Index
	b.linkIndex = idx

	ours, foreign, err := listRoutes(b.h)
	if err != nil {
		return syncResult{err: err}
	}
	neighs, err := b.listNeigh(idx)
	if err != nil {
		return syncResult{err: err}
	}
	fdbs, err := retryDump(func() ([]netlink.Neigh, error) { return b.h.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return syncResult{err: fmt.Errorf("list fdb of %s: %w", DeviceName, err)}
	}
	haveNeigh := make(map[netip.Addr]netlink.Neigh, len(neighs))
	for _, n := range neighs {
		haveNeigh[ipToAddr(n.IP)] = n
	}
	haveFDB := make(map[string]netlink.Neigh, len(fdbs))
	for _, n := range fdbs {
		if n.State&netlink.NUD_PERMANENT != 0 && len(n.HardwareAddr) == 6 {
			haveFDB[n.HardwareAddr.String()] = n
		}
	}

	failed := make(map[netip.Prefix]error)
	writes := 0
	// Adds first: FDB and neighbour entries (shared per endpoint / gateway),
	// then routes.
	fdbErr := make(map[netip.Addr]error)
	neighErr := make(map[netip.Addr]error)
	for p, e := range want {
		f := desiredFDB(e.TunnelEndpoint, idx)
		if _, done := fdbErr[e.TunnelEndpoint]; !done {
			var err error
			if h, ok := haveFDB[f.HardwareAddr.String()]; !ok || ipToAddr(h.IP) != e.TunnelEndpoint {
				writes++
				if err = b.h.NeighSet(&f); err != nil {
					err = fmt.Errorf("set fdb %s dst %s: %w", f.HardwareAddr, e.TunnelEndpoint, err)
				}
			}
			fdbErr[e.TunnelEndpoint] = err
		}
		n := desiredNeigh(e, idx)
		gw := ipToAddr(n.IP)
		if _, done := neighErr[gw]; !done {
			var err error
			if h, ok := haveNeigh[gw]; !ok || !neighMatches(n, h) {
				writes++
				if err = b.h.NeighSet(&n); err != nil {
					err = fmt.Errorf("set neighbour %s lladdr %s: %w", gw, n.HardwareAddr, err)
				}
			}
			neighErr[gw] = err
		}
		if err := errors.Join(fdbErr[e.TunnelEndpoint], neighErr[gw]); err != nil {
			failed[p] = err
		}
	}

	rp := routeParams{mode: ModeVXLAN, linkIndex: idx, mtu: b.deviceMTU()}
	spec := func(e Entry) routeSpec { return specFor(e, rp) }
	plan := planRoutes(want, spec, ours, foreign, canDelete)
	rfailed, removed, rw := applyRoutes(b.h, plan)
	writes += rw
	for p, err := range rfailed {
		failed[p] = errors.Join(failed[p], err)
	}

	// Deletes last: neighbour and FDB entries no remaining podmesh route on
	// the device uses any more.
	removedSet := make(map[netip.Prefix]bool, len(removed))
	for _, p := range removed {
		removedSet[p] = true
	}
	usedGW := make(map[netip.Addr]bool)
	for _, e := range want {
		gw, _ := vtep(e.Prefix, e.TunnelEndpoint)
		usedGW[gw] = true
	}
	for p, r := range ours {
		if !removedSet[p] && r.LinkIndex == idx {
			usedGW[routeGateway(r)] = true
		}
	}
	usedMAC := make(map[string]bool)
	var errs []error
	for gw, n := range haveNeigh {
		if usedGW[gw] {
			usedMAC[n.HardwareAddr.String()] = true
			continue
		}
		if n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		writes++
		if err := b.h.NeighDel(&n); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete neighbour %s: %w", gw, err))
		}
	}
	for _, e := range want {
		usedMAC[TunnelMAC(e.TunnelEndpoint).String()] = true
	}
	for mac, n := range haveFDB {
		if usedMAC[mac] {
			continue
		}
		writes++
		if err := b.h.NeighDel(&n); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete fdb %s: %w", mac, err))
		}
	}
	return syncResult{failed: failed, removed: removed, writes: writes, err: errors.Join(errs...)}
}

func (b *vxlanBackend) listNeigh(idx int) ([]netlink.Neigh, error) {
	var out []netlink.Neigh
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		ns, err := retryDump(func() ([]netlink.Neigh, error) { return b.h.NeighList(idx, fam) })
		if err != nil {
			return nil, fmt.Errorf("list neighbours of %s: %w", DeviceName, err)
		}
		out = append(out, ns...)
	}
	return out, nil
}

func (b *vxlanBackend) apply(d delta) syncResult {
	idx := b.linkIndex
	if idx == 0 {
		return syncResult{needFull: true}
	}
	failed := make(map[netip.Prefix]error)
	writes := 0
	// Adds first: FDB and neighbour entries for the endpoints of new and
	// changed prefixes (NeighSet replaces, so repeating one is harmless).
	done := make(map[netip.Addr]error)
	for _, e := range append(append([]Entry(nil), d.add...), d.change...) {
		err, ok := done[e.TunnelEndpoint]
		if !ok {
			f := desiredFDB(e.TunnelEndpoint, idx)
			n := desiredNeigh(e, idx)
			writes += 2
			if ferr := b.h.NeighSet(&f); ferr != nil {
				err = fmt.Errorf("set fdb %s dst %s: %w", f.HardwareAddr, e.TunnelEndpoint, ferr)
			}
			if nerr := b.h.NeighSet(&n); nerr != nil {
				err = errors.Join(err, fmt.Errorf("set neighbour %s: %w", ipToAddr(n.IP), nerr))
			}
			done[e.TunnelEndpoint] = err
		}
		if err != nil {
			failed[e.Prefix] = err
		}
	}
	rp := routeParams{mode: ModeVXLAN, linkIndex: idx, mtu: b.deviceMTU()}
	rfailed, removed, rw, needFull := applyRouteDelta(b.h, d, func(e Entry) netlink.Route { return desiredRoute(e, rp) })
	writes += rw
	for p, err := range rfailed {
		failed[p] = errors.Join(failed[p], err)
	}
	// Deletes last: neighbour and FDB entries of endpoints no wanted prefix
	// uses any more.
	gone := append(append([]Entry(nil), d.remove...), d.stale...)
	if len(gone) == 0 {
		return syncResult{failed: failed, removed: removed, writes: writes, needFull: needFull}
	}
	usedGW := make(map[netip.Addr]bool)
	usedEP := make(map[netip.Addr]bool)
	for _, e := range d.want {
		gw, _ := vtep(e.Prefix, e.TunnelEndpoint)
		usedGW[gw] = true
		usedEP[e.TunnelEndpoint] = true
	}
	var errs []error
	for _, e := range gone {
		if _, bad := rfailed[e.Prefix]; bad {
			continue
		}
		if gw, _ := vtep(e.Prefix, e.TunnelEndpoint); !usedGW[gw] {
			usedGW[gw] = true // once
			n := desiredNeigh(e, idx)
			writes++
			if err := b.h.NeighDel(&n); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("delete neighbour %s: %w", gw, err))
			}
		}
		if !usedEP[e.TunnelEndpoint] {
			usedEP[e.TunnelEndpoint] = true
			f := desiredFDB(e.TunnelEndpoint, idx)
			writes++
			if err := b.h.NeighDel(&f); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("delete fdb %s: %w", f.HardwareAddr, err))
			}
		}
	}
	return syncResult{failed: failed, removed: removed, writes: writes, needFull: needFull, err: errors.Join(errs...)}
}

func routeGateway(r netlink.Route) netip.Addr {
	if a := ipToAddr(r.Gw); a.IsValid() {
		return a
	}
	return viaAddr(r.Via)
}

func (b *vxlanBackend) traffic() (map[uint32]Counter, map[string]Counter, error) {
	return nil, nil, nil
}

func (b *vxlanBackend) close() error { return nil }

// ensureDevice makes podmesh's tunnel device exist, match want and be up.
// compatible decides whether an existing device can be fixed in place (MTU,
// MAC, NOARP, up) or must be recreated. A device with podmesh's name is
// podmesh's, so recreating it touches nothing foreign.
func ensureDevice(h *netlink.Handle, log logrus.FieldLogger, want netlink.Link, compatible func(netlink.Link) bool, noarp bool) (netlink.Link, error) {
	name := want.Attrs().Name
	l, err := h.LinkByName(name)
	switch {
	case err != nil && !isLinkNotFound(err):
		return nil, fmt.Errorf("find %s: %w", name, err)
	case err == nil && !compatible(l):
		log.WithField("device", name).Info("Recreating tunnel device whose configuration does not match")
		if err := h.LinkDel(l); err != nil && !isGone(err) {
			return nil, fmt.Errorf("delete %s: %w", name, err)
		}
		l = nil
	case err != nil:
		l = nil
	}
	if l == nil {
		if err := h.LinkAdd(want); err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
		log.WithField("device", name).Info("Created tunnel device")
		if l, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("find %s after create: %w", name, err)
		}
	}
	var errs []error
	a := l.Attrs()
	if a.MTU != want.Attrs().MTU {
		if err := h.LinkSetMTU(l, want.Attrs().MTU); err != nil {
			errs = append(errs, fmt.Errorf("set mtu of %s: %w", name, err))
		}
	}
	if mac := want.Attrs().HardwareAddr; mac != nil && a.HardwareAddr.String() != mac.String() {
		if err := h.LinkSetHardwareAddr(l, mac); err != nil {
			errs = append(errs, fmt.Errorf("set mac of %s: %w", name, err))
		}
	}
	if noarp && a.RawFlags&unix.IFF_NOARP == 0 {
		if err := h.LinkSetARPOff(l); err != nil {
			errs = append(errs, fmt.Errorf("set noarp on %s: %w", name, err))
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(l); err != nil {
			if vx, ok := want.(*netlink.Vxlan); ok && errors.Is(err, unix.EADDRINUSE) {
				err = fmt.Errorf("UDP port %d is taken, by another VXLAN device with other flags or a socket (choose another tunnel port): %w", vx.Port, err)
			}
			errs = append(errs, fmt.Errorf("set %s up: %w", name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return l, nil
}
