package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/podmesh/podmesh/bpf"
)

// ebpfBackend is the default mode: a collect-metadata ("external") VXLAN
// device podmesh_vxlan (NOARP, bpf.DeviceMAC, tunnel MTU), the bpf package's
// program at its egress, and per remote prefix
//
//	<prefix> dev podmesh_vxlan scope link proto podmesh mtu <underlay-overhead>
//	ipcache[<prefix>] = {endpoint, cluster ID}
//
// The route only steers the packet to the device; the program picks the
// tunnel endpoint from the ipcache.
type ebpfBackend struct {
	base
	dp       *bpf.Datapath
	mac      net.HardwareAddr
	attached int // ifindex the program was last attached to by this process
}

func newEBPFBackend(bs base, cfg Config) (backend, error) {
	mac, err := net.ParseMAC(bpf.DeviceMAC)
	if err != nil {
		return nil, fmt.Errorf("parse bpf.DeviceMAC: %w", err)
	}
	// Pins must outlive the agent: BPFRoot is normally on the host's bpffs.
	// Where it is not, mount one there (a no-op when it already is).
	if err := bpf.MountBPFFS(cfg.BPFRoot); err != nil {
		return nil, fmt.Errorf("bpffs at %s: %w", cfg.BPFRoot, err)
	}
	dp, err := bpf.Load(bpf.Options{PinDir: cfg.BPFRoot, LocalClusterID: cfg.LocalClusterID, Log: bs.log})
	if err != nil {
		return nil, fmt.Errorf("load bpf datapath from %s: %w", cfg.BPFRoot, err)
	}
	return &ebpfBackend{base: bs, dp: dp, mac: mac}, nil
}

func (b *ebpfBackend) mode() string { return ModeEBPF }

func (b *ebpfBackend) deviceMTU() int { return routeMTU(ModeEBPF, b.mtu, b.local) }

func (b *ebpfBackend) wantDevice() *netlink.Vxlan {
	return &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: DeviceName, MTU: b.deviceMTU(), HardwareAddr: b.mac},
		FlowBased: true,
		Port:      b.port,
		Learning:  false,
	}
}

// programAttached reports whether a program is attached at the device's TCX
// egress hook (podmesh is the only one attaching there). Where TCX is not
// available (the bpf package then uses cls_bpf) it cannot tell and says yes.
func (b *ebpfBackend) programAttached(ifindex int) bool {
	n := 1
	_ = b.ns.do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXEgress})
		if err == nil {
			n = len(res.Programs)
		}
		return nil
	})
	return n > 0
}

func ebpfDeviceCompatible(want, have *netlink.Vxlan) bool {
	return have.FlowBased && have.Port == want.Port
}

// checkClusterID rejects an entry the ipcache cannot hold.
func checkClusterID(e Entry) error {
	if e.ClusterID == 0 || e.ClusterID > bpf.MaxClusterID {
		return fmt.Errorf("cluster ID %d not in 1..%d", e.ClusterID, bpf.MaxClusterID)
	}
	return nil
}

// ipcacheEntry converts a desired Entry into its ipcache entry.
func ipcacheEntry(e Entry) bpf.Entry {
	return bpf.Entry{Prefix: e.Prefix.Masked(), TunnelEndpoint: e.TunnelEndpoint.Unmap(), ClusterID: e.ClusterID}
}

// planIpcache compares the ipcache with want. add holds the entries to
// upsert (missing or different); keep is the complete set the ipcache must
// hold afterwards: want plus the entries that may not be deleted yet.
func planIpcache(want map[netip.Prefix]bpf.Entry, have []bpf.Entry, canDelete func(netip.Prefix) bool) (add, keep []bpf.Entry, needPrune bool) {
	haveBy := make(map[netip.Prefix]bpf.Entry, len(have))
	for _, h := range have {
		haveBy[h.Prefix] = h
	}
	for p, w := range want {
		keep = append(keep, w)
		if h, ok := haveBy[p]; !ok || h != w {
			add = append(add, w)
		}
	}
	for p, h := range haveBy {
		if _, ok := want[p]; ok {
			continue
		}
		if canDelete(p) {
			needPrune = true
			continue
		}
		keep = append(keep, h)
	}
	return add, keep, needPrune
}

func (b *ebpfBackend) sync(want map[netip.Prefix]Entry, canDelete func(netip.Prefix) bool) syncResult {
	wd := b.wantDevice()
	link, err := ensureDevice(b.h, b.log, wd, func(l netlink.Link) bool {
		vx, ok := l.(*netlink.Vxlan)
		return ok && ebpfDeviceCompatible(wd, vx)
	}, true)
	if err != nil {
		return syncResult{err: err}
	}
	idx := link.Attrs().Index
	if b.attached == idx && !b.programAttached(idx) {
		b.log.WithField("device", DeviceName).Warn("Program no longer attached, attaching it again")
		b.attached = 0
	}
	if b.attached != idx {
		// Attach replaces the program on a pinned link atomically, so doing
		// it once per process (and again if the device was recreated) keeps
		// the newest program attached without a gap.
		if err := b.ns.do(func() error { return b.dp.Attach(idx) }); err != nil {
			return syncResult{err: fmt.Errorf("attach program to %s: %w", DeviceName, err)}
		}
		b.attached = idx
	}

	failed := make(map[netip.Prefix]error)
	wantIP := make(map[netip.Prefix]bpf.Entry, len(want))
	for p, e := range want {
		if err := checkClusterID(e); err != nil {
			failed[p] = err
			continue
		}
		wantIP[p] = ipcacheEntry(e)
	}
	// This pass diffs against a fresh dump of the ipcache; Recheck drops the
	// loader's record of the map, and Entries' dump becomes the new record,
	// so the Syncs below (and later delta passes) trust what the kernel held
	// now and an entry removed behind our back is written again.
	b.dp.Recheck()
	have, err := b.dp.Entries()
	if err != nil {
		return syncResult{err: fmt.Errorf("list ipcache: %w", err)}
	}
	ours, foreign, err := listRoutes(b.h)
	if err != nil {
		return syncResult{err: err}
	}

	// Adds first: the ipcache learns a prefix before a route sends traffic
	// for it to the device.
	add, _, _ := planIpcache(wantIP, have, func(netip.Prefix) bool { return false })
	writes := len(add)
	if len(add) > 0 {
		if _, err := b.dp.Sync(add, false); err != nil {
			err = fmt.Errorf("update ipcache: %w", err)
			for _, e := range add {
				failed[e.Prefix] = err
				delete(wantIP, e.Prefix)
			}
		}
	}
	rp := routeParams{mode: ModeEBPF, linkIndex: idx, mtu: b.deviceMTU()}
	routed := want // the prefixes whose ipcache entry is in place
	if len(failed) > 0 {
		routed = make(map[netip.Prefix]Entry, len(wantIP))
		for p := range wantIP {
			routed[p] = want[p]
		}
	}
	spec := func(e Entry) routeSpec { return specFor(e, rp) }
	// A prefix whose ipcache update failed keeps whatever route it had.
	routeCanDelete := func(p netip.Prefix) bool { return canDelete(p) && failed[p] == nil }
	rfailed, removed, rw := applyRoutes(b.h, planRoutes(routed, spec, ours, foreign, routeCanDelete))
	writes += rw
	for p, err := range rfailed {
		failed[p] = errors.Join(failed[p], err)
	}

	// Deletes last: the ipcache forgets a prefix once no route leads to it.
	// A prefix whose route could not be removed keeps its entry.
	_, keep, needPrune := planIpcache(wantIP, have, func(p netip.Prefix) bool {
		_, rf := rfailed[p]
		_, stillWanted := want[p]
		return canDelete(p) && !rf && !stillWanted
	})
	var errs []error
	if needPrune {
		st, err := b.dp.Sync(keep, true)
		if err != nil {
			errs = append(errs, fmt.Errorf("prune ipcache: %w", err))
		}
		writes += st.Deleted
	}
	return syncResult{failed: failed, removed: removed, writes: writes, err: errors.Join(errs...)}
}

func (b *ebpfBackend) apply(d delta) syncResult {
	idx := b.attached
	if idx == 0 {
		return syncResult{needFull: true}
	}
	failed := make(map[netip.Prefix]error)
	valid := func(e Entry) bool {
		if err := checkClusterID(e); err != nil {
			failed[e.Prefix] = err
			return false
		}
		return true
	}
	var up []bpf.Entry
	var add, change []Entry
	for _, e := range d.add {
		if valid(e) {
			up = append(up, ipcacheEntry(e))
			add = append(add, e)
		}
	}
	for _, e := range d.change {
		if valid(e) {
			up = append(up, ipcacheEntry(e))
			change = append(change, e)
		}
	}
	writes := 0
	// Adds first: ipcache, then routes. Apply writes only the given entries
	// (and skips those its record of the map says are in place), so this
	// costs in proportion to the changes.
	if len(up) > 0 {
		st, err := b.dp.Apply(up, nil)
		if err != nil {
			err = fmt.Errorf("update ipcache: %w", err)
			for _, e := range up {
				failed[e.Prefix] = err
			}
			return syncResult{failed: failed, needFull: true}
		}
		writes += st.Added + st.Updated
	}
	rp := routeParams{mode: ModeEBPF, linkIndex: idx, mtu: b.deviceMTU()}
	rd := delta{add: add, change: change, remove: d.remove, want: d.want}
	rfailed, removed, rw, needFull := applyRouteDelta(b.h, rd, func(e Entry) netlink.Route { return desiredRoute(e, rp) })
	writes += rw
	for p, err := range rfailed {
		failed[p] = errors.Join(failed[p], err)
	}
	// Deletes last: the ipcache forgets exactly the prefixes whose route is
	// gone; one whose route could not be removed keeps its entry. Nothing
	// else is deleted here (adopted or foreign entries are the full pass's
	// business), so this too costs in proportion to the changes.
	var errs []error
	if len(removed) > 0 {
		st, err := b.dp.Apply(nil, removed)
		if err != nil {
			errs = append(errs, fmt.Errorf("delete ipcache entries: %w", err))
		}
		writes += st.Deleted
	}
	return syncResult{failed: failed, removed: removed, writes: writes, needFull: needFull, err: errors.Join(errs...)}
}

func (b *ebpfBackend) traffic() (map[uint32]Counter, map[string]Counter, error) {
	c, err := b.dp.Counters()
	if err != nil {
		return nil, nil, fmt.Errorf("read counters: %w", err)
	}
	tx := make(map[uint32]Counter, len(c))
	for id, v := range c {
		tx[id] = Counter{Packets: v.Packets, Bytes: v.Bytes}
	}
	d, err := b.dp.Drops()
	if err != nil {
		return tx, nil, fmt.Errorf("read drop counters: %w", err)
	}
	conv := func(c bpf.Counter) Counter { return Counter{Packets: c.Packets, Bytes: c.Bytes} }
	drops := map[string]Counter{
		"miss":           conv(d.Miss),
		"malformed":      conv(d.Malformed),
		"tunnel_key":     conv(d.TunnelKey),
		"not_configured": conv(d.NotConfigured),
	}
	return tx, drops, nil
}

func (b *ebpfBackend) close() error { return b.dp.Close() }
