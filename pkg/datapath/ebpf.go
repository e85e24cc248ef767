package datapath

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/podmesh/podmesh/bpf"
)

// ebpfBackend is the default mode: a collect-metadata ("external") VXLAN
// device podmesh_vxlan (NOARP, bpf.DeviceMAC, tunnel MTU), the bpf package's
// program at its egress, one route per remote cluster pod CIDR
//
//	<cluster pod CIDR> dev podmesh_vxlan scope link proto podmesh mtu <underlay-overhead>
//
// and per remote prefix one object, its ipcache entry
//
//	ipcache[<prefix>] = {endpoint, cluster ID}
//
// The route only steers the packet to the device; the program picks the
// tunnel endpoint from the ipcache. Kernel routes are O(remote clusters),
// map entries O(prefixes).
type ebpfBackend struct {
	base
	dp       *bpf.Datapath
	mac      net.HardwareAddr
	attached int // ifindex the program was last attached to by this process
	// routed are the cluster CIDRs this process routed, so that one the
	// desired set withdraws loses its route even before prune is allowed.
	routed []netip.Prefix
	// image is what the ipcache holds when it holds exactly the valid
	// desired set of generation image.gen: derived from the desired set
	// only, never from the kernel, and kept while the set stays.
	image wantImage
}

// wantImage is the ipcache image of one valid desired set: its entries in
// the map's encoding and order (nil when they cannot form one, e.g. two
// forms of one prefix), and the objects of the set the ipcache cannot hold.
type wantImage struct {
	gen    uint64
	im     *bpf.Image
	failed map[netip.Prefix]error
}

// imageOf derives the image of want.
func imageOf(want map[netip.Prefix]Entry, gen uint64) wantImage {
	wi := wantImage{gen: gen, failed: make(map[netip.Prefix]error)}
	ib := bpf.NewImageBuilder(len(want))
	for p, e := range want {
		if err := checkClusterID(e); err != nil {
			wi.failed[p] = err
		} else if ib.Add(ipcacheEntry(e)) != nil {
			return wi // no image: the entry-by-entry comparison reports what is wrong
		}
	}
	wi.im, _ = ib.Image()
	return wi
}

// imageFor returns the image of want, derived again only when gen moved (0:
// a set without a name, derived every time).
func (b *ebpfBackend) imageFor(want map[netip.Prefix]Entry, gen uint64) wantImage {
	if gen == 0 || b.image.gen != gen {
		wi := imageOf(want, gen)
		if gen == 0 {
			return wi
		}
		b.image = wi
	}
	return b.image
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

// ipcacheView is a full pass's read of the ipcache. It starts as the raw
// dump and the image of the desired set; update compares the two byte
// images and decodes the dump (into have, with the count of entries that
// did not decode) only when they differ, so a pass over a converged ipcache
// decodes and indexes nothing.
type ipcacheView struct {
	dump        *bpf.Dump
	want        wantImage
	inSync      bool // the dump holds exactly the valid desired entries
	have        map[netip.Prefix]bpf.Entry
	undecodable int
}

// decode fills have from the dump, once.
func (v *ipcacheView) decode() {
	if v.have != nil {
		return
	}
	es, undecodable := v.dump.Entries()
	v.have, v.undecodable = make(map[netip.Prefix]bpf.Entry, len(es)), undecodable
	for _, e := range es {
		v.have[e.Prefix] = e
	}
}

// setup makes the device exist and match and the program attached.
func (b *ebpfBackend) setup() error {
	wd := b.wantDevice()
	link, err := ensureDevice(b.h, b.log, wd, func(l netlink.Link) bool {
		vx, ok := l.(*netlink.Vxlan)
		return ok && ebpfDeviceCompatible(wd, vx)
	}, true)
	if err != nil {
		return err
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
			return fmt.Errorf("attach program to %s: %w", DeviceName, err)
		}
		b.attached = idx
	}
	return nil
}

// clusterRoutes converges the cluster routes: one "<cluster pod CIDR> dev
// podmesh_vxlan scope link proto podmesh mtu <tunnel MTU>" per CIDR a remote
// cluster declares. A CIDR routed before and withdrawn since loses its
// route; with prune, so does every other podmesh route (the per-prefix
// routes of an older version, the CIDRs of clusters removed while the agent
// was down). They are few, so it reads the table and compares every time.
func (b *ebpfBackend) clusterRoutes(cidrs []netip.Prefix, prune bool) (int, error) {
	rv, err := readRoutes(b.rb)
	if err != nil {
		return 0, err
	}
	want := make(map[netip.Prefix]Entry, len(cidrs))
	for _, c := range cidrs {
		want[c.Masked()] = Entry{Prefix: c.Masked()}
	}
	rp := routeParams{mode: ModeEBPF, linkIndex: b.attached, mtu: b.deviceMTU()}
	spec := func(e Entry) routeSpec { return specFor(e, rp) }
	written, failed := updateRoutes(b.rb, rv, want, spec)
	var errs []error
	for _, p := range sortedPrefixes(failed) {
		errs = append(errs, fmt.Errorf("cluster route %s: %w", p, failed[p]))
	}
	var gone []Entry
	for _, c := range b.routed {
		if _, ok := want[c]; !ok {
			gone = append(gone, Entry{Prefix: c})
		}
	}
	dfailed := deleteRoutes(b.rb, specRoutes(gone, spec))
	written += len(gone) - len(dfailed)
	for p, err := range dfailed {
		errs = append(errs, fmt.Errorf("cluster route %s: %w", p, err))
	}
	// What is routed now: the wanted CIDRs, and the withdrawn ones whose
	// delete failed (tried again next time).
	b.routed = b.routed[:0]
	for p := range want {
		if failed[p] == nil {
			b.routed = append(b.routed, p)
		}
	}
	for p := range dfailed {
		b.routed = append(b.routed, p)
	}
	if prune {
		n, err := pruneRoutes(b.rb, rv, want)
		written += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return written, errors.Join(errs...)
}

// read dumps the ipcache. The image of want to compare it with is derived
// (when gen moved) on another goroutine while the kernel walks its trie.
func (b *ebpfBackend) read(want map[netip.Prefix]Entry, gen uint64) (kernelView, error) {
	v := &ipcacheView{}
	var wg sync.WaitGroup
	wg.Go(func() { v.want = b.imageFor(want, gen) })
	dump, err := b.dp.Dump()
	wg.Wait()
	if err != nil {
		return nil, fmt.Errorf("list ipcache: %w", err)
	}
	v.dump = dump
	return v, nil
}

// update writes the ipcache entries of want in one batched call: with a
// view only those missing or different, without one all of them. With a
// view whose dump matches want's image it writes nothing and decodes
// nothing.
func (b *ebpfBackend) update(kv kernelView, want map[netip.Prefix]Entry, gen uint64) (int, map[netip.Prefix]error) {
	var have map[netip.Prefix]bpf.Entry
	if v, ok := kv.(*ipcacheView); ok {
		if v.inSync = v.dump.Matches(v.want.im); v.inSync {
			return 0, maps.Clone(v.want.failed)
		}
		v.decode()
		have = v.have
	}
	failed := make(map[netip.Prefix]error)
	up := make([]bpf.Entry, 0, len(want))
	for p, e := range want {
		if err := checkClusterID(e); err != nil {
			failed[p] = err
			continue
		}
		ie := ipcacheEntry(e)
		if h, ok := have[p]; ok && h == ie {
			continue
		}
		up = append(up, ie)
	}
	return b.apply(up, failed)
}

// write writes the ipcache entries of objs in one batched call. When objs
// is the whole valid set (gen: an agent start), it writes that set's image
// and keeps it for the next full pass to compare the kernel with; given in
// the trie's order, as a sorted desired set is, the image needs no sort.
func (b *ebpfBackend) write(objs []Entry, gen uint64, _ func(netip.Prefix) bool) (int, map[netip.Prefix]error) {
	failed := make(map[netip.Prefix]error)
	if gen != 0 {
		ib := bpf.NewImageBuilder(len(objs))
		var err error
		for _, e := range objs {
			if cerr := checkClusterID(e); cerr != nil {
				failed[e.Prefix] = cerr
			} else if err = ib.Add(ipcacheEntry(e)); err != nil {
				break
			}
		}
		var im *bpf.Image
		if err == nil {
			im, err = ib.Image()
		}
		if err == nil {
			b.image = wantImage{gen: gen, im: im, failed: maps.Clone(failed)}
			if _, err := b.dp.Write(im); err != nil {
				err = fmt.Errorf("update ipcache: %w", err)
				for _, e := range objs {
					if failed[e.Prefix] == nil {
						failed[e.Prefix] = err
					}
				}
			}
			return im.Len(), failed
		}
		clear(failed) // the entry-by-entry path below reports it
	}
	up := make([]bpf.Entry, 0, len(objs))
	for _, e := range objs {
		if err := checkClusterID(e); err != nil {
			failed[e.Prefix] = err
			continue
		}
		up = append(up, ipcacheEntry(e))
	}
	return b.apply(up, failed)
}

// apply upserts up in one batched call; a failure fails every entry of up.
func (b *ebpfBackend) apply(up []bpf.Entry, failed map[netip.Prefix]error) (int, map[netip.Prefix]error) {
	if len(up) == 0 {
		return 0, failed
	}
	if _, err := b.dp.Apply(up, nil); err != nil {
		failAll(failed, up, fmt.Errorf("update ipcache: %w", err))
	}
	return len(up), failed
}

func failAll(failed map[netip.Prefix]error, es []bpf.Entry, err error) {
	for _, e := range es {
		failed[e.Prefix] = err
	}
}

func (b *ebpfBackend) delete(es []Entry) map[netip.Prefix]error {
	failed := make(map[netip.Prefix]error)
	ps := make([]netip.Prefix, len(es))
	for i, e := range es {
		ps[i] = e.Prefix.Masked()
	}
	if _, err := b.dp.Apply(nil, ps); err != nil {
		err = fmt.Errorf("delete ipcache entries: %w", err)
		for _, p := range ps {
			failed[p] = err
		}
	}
	return failed
}

// prune removes the ipcache entries want does not hold, once allowed. The
// ipcache is podmesh's own map: everything in it is podmesh's. Entries that
// do not decode (left by another writer) are rare: only when the read found
// some does prune hand the whole set to a pruning bpf Sync, which reads the
// map again and removes them too.
func (b *ebpfBackend) prune(kv kernelView, want map[netip.Prefix]Entry, allowed bool) (int, error) {
	if !allowed {
		return 0, nil
	}
	v := kv.(*ipcacheView)
	if v.inSync {
		return 0, nil
	}
	v.decode()
	if v.undecodable > 0 {
		keep := make([]bpf.Entry, 0, len(want))
		for _, e := range want {
			if checkClusterID(e) == nil {
				keep = append(keep, ipcacheEntry(e))
			}
		}
		st, err := b.dp.Sync(keep, true)
		if err != nil {
			return st.Deleted, fmt.Errorf("prune ipcache: %w", err)
		}
		return st.Deleted, nil
	}
	var gone []netip.Prefix
	for p := range v.have {
		if _, ok := want[p]; !ok {
			gone = append(gone, p)
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	st, err := b.dp.Apply(nil, gone)
	if err != nil {
		return st.Deleted, fmt.Errorf("prune ipcache: %w", err)
	}
	return st.Deleted, nil
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
