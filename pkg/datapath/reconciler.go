package datapath

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Config configures a Reconciler.
type Config struct {
	// Mode is ModeEBPF (the default when empty), ModeVXLAN or ModeNative.
	Mode string
	// LocalIP is this node's InternalIP: the tunnel source and underlay
	// address. Its family is the underlay family.
	LocalIP netip.Addr
	// TunnelPort is the VXLAN UDP port; 0 means meshapi.DefaultTunnelUDPPort.
	TunnelPort int
	// MTU is the underlay MTU; 0 means the MTU of the link holding LocalIP.
	MTU int
	// BPFRoot is the bpffs directory owned by podmesh; empty means
	// DefaultBPFRoot. The ebpf mode pins its maps and link there; the other
	// modes remove an ebpf datapath left there (a mode switch) once prune is
	// allowed.
	BPFRoot string
	// LocalClusterID is this cluster's ID (ebpf mode: the program tags
	// traffic with it).
	LocalClusterID uint32
	// RecheckInterval is how often the kernel is re-read to repair drift
	// even when nothing changed; 0 means DefaultRecheckInterval.
	RecheckInterval time.Duration
	// Desired is the desired set of remote prefixes. Required.
	Desired *Desired
	// Log is the logger; nil discards.
	Log logrus.FieldLogger
	// NetNS optionally names a network namespace (a path such as
	// /var/run/netns/x or /proc/<pid>/ns/net) the reconciler programs instead
	// of the calling process's current one. Netlink handles are bound to it,
	// and program attachment and sysctls run on a thread switched into it.
	// The agent leaves it empty; tests use it to run one reconciler per
	// simulated node.
	NetNS string
}

// Defaults.
const (
	DefaultBPFRoot         = "/sys/fs/bpf/podmesh"
	DefaultRecheckInterval = 10 * time.Second
)

// Reconciler makes the kernel match a Desired set. See the package doc.
type Reconciler struct {
	cfg     Config
	log     logrus.FieldLogger
	desired *Desired
	b       backend
	h       *netlink.Handle
	rb      *routeBatcher
	ns      nsRunner
	metrics *metrics

	// mu protects status.
	mu     sync.Mutex
	status Status

	// Owned by the Run goroutine.
	rev uint64 // desired revision the last pass processed
	// The per-object status: an object of want is programmed unless
	// failed holds it; failed also holds the live objects validate
	// rejected (never in want).
	want           map[netip.Prefix]Entry     // the valid live desired objects as of rev
	wantGen        uint64                     // moves on every change of want; names its content for the backend
	wantCount      map[string]int             // want's objects per cluster
	wantFamilies   families                   // the address families of want's prefixes (a superset)
	wantOK         bool                       // the last pass left every object of want programmed
	failed         map[netip.Prefix]objStatus // live objects the last pass that handled them could not program
	undeleted      map[netip.Prefix]error     // withdrawn objects whose delete failed; retried by every full pass
	podCIDRs       map[string][]netip.Prefix  // the remote clusters' pod CIDRs as of the last full pass
	pruneAllowed   bool                       // PruneAllowed as of the last full pass
	lastOK         bool                       // the last pass left nothing failed; else the next one is full
	rpFilterLogged bool
	autoMTU        bool // Config.MTU was 0: follow the MTU of the link holding LocalIP
	// wantIndexing is busy while another goroutine indexes the first
	// objects into wantIndexed: the pass that fills an empty table does
	// not wait for it; the next pass does (settleWant).
	wantIndexing sync.WaitGroup
	wantIndexed  map[netip.Prefix]Entry
	// sysctl is nsSysctl; unit tests replace it.
	sysctl        func(name, set string) (was string, err error)
	leftoversDone bool
	clusterNames  map[uint32]string
}

// New validates cfg and opens the kernel handles of the chosen mode. It
// changes nothing in the kernel; Run does.
func New(cfg Config) (_ *Reconciler, err error) {
	if cfg.Mode == "" {
		cfg.Mode = ModeEBPF
	}
	switch cfg.Mode {
	case ModeEBPF, ModeVXLAN, ModeNative:
	default:
		return nil, fmt.Errorf("unknown routing mode %q (want %s, %s or %s)", cfg.Mode, ModeEBPF, ModeVXLAN, ModeNative)
	}
	if cfg.Desired == nil {
		return nil, errors.New("no desired set")
	}
	if !cfg.LocalIP.IsValid() {
		return nil, errors.New("no local IP")
	}
	cfg.LocalIP = cfg.LocalIP.Unmap()
	if cfg.TunnelPort == 0 {
		cfg.TunnelPort = meshapi.DefaultTunnelUDPPort
	}
	if cfg.TunnelPort < 1 || cfg.TunnelPort > 65535 {
		return nil, fmt.Errorf("tunnel port %d out of range", cfg.TunnelPort)
	}
	if cfg.BPFRoot == "" {
		cfg.BPFRoot = DefaultBPFRoot
	}
	if cfg.RecheckInterval <= 0 {
		cfg.RecheckInterval = DefaultRecheckInterval
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = l
	}
	log = log.WithField("mode", cfg.Mode)

	r := newReconciler(cfg, log)
	defer func() {
		if err != nil {
			r.closeHandles()
		}
	}()
	if cfg.NetNS != "" {
		ns, err := netns.GetFromPath(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("open netns %s: %w", cfg.NetNS, err)
		}
		r.ns.ns = ns
		if r.h, err = netlink.NewHandleAt(ns); err != nil {
			return nil, fmt.Errorf("netlink handle in %s: %w", cfg.NetNS, err)
		}
	} else if r.h, err = netlink.NewHandle(); err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	if cfg.MTU == 0 {
		r.autoMTU = true
		if cfg.MTU, err = linkMTUFor(r.h, cfg.LocalIP); err != nil {
			return nil, fmt.Errorf("detect underlay mtu: %w", err)
		}
	}
	if min := 576 + encapOverhead(cfg.LocalIP); cfg.MTU < min {
		return nil, fmt.Errorf("underlay mtu %d below %d", cfg.MTU, min)
	}
	r.cfg = cfg
	if r.rb, err = newRouteBatcher(r.ns.ns); err != nil {
		return nil, err
	}
	bs := base{h: r.h, rb: r.rb, ns: r.ns, log: log, local: cfg.LocalIP, port: cfg.TunnelPort, mtu: cfg.MTU}
	switch cfg.Mode {
	case ModeNative:
		r.b = &nativeBackend{base: bs}
	case ModeVXLAN:
		r.b = &vxlanBackend{base: bs}
	case ModeEBPF:
		if r.b, err = newEBPFBackend(bs, cfg); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// newReconciler returns a Reconciler without kernel handles or backend.
func newReconciler(cfg Config, log logrus.FieldLogger) *Reconciler {
	r := &Reconciler{
		cfg:          cfg,
		log:          log,
		desired:      cfg.Desired,
		ns:           nsRunner{ns: netns.None()},
		wantCount:    make(map[string]int),
		failed:       make(map[netip.Prefix]objStatus),
		undeleted:    make(map[netip.Prefix]error),
		clusterNames: make(map[uint32]string),
		metrics:      newMetrics(),
	}
	r.sysctl = r.nsSysctl
	r.status.Mode = cfg.Mode
	return r
}

func (r *Reconciler) closeHandles() {
	if r.h != nil {
		r.h.Close()
	}
	r.rb.close()
	if r.ns.ns.IsOpen() {
		r.ns.ns.Close()
	}
}

// Run converges on every Desired change and every RecheckInterval until ctx
// is done, then releases its handles and returns nil. Kernel state is left in
// place on exit: a new Reconciler adopts it. Run may be called once.
func (r *Reconciler) Run(ctx context.Context) error {
	defer func() {
		if err := r.b.close(); err != nil {
			r.log.WithError(err).Warn("Closing datapath backend failed")
		}
		r.closeHandles()
	}()
	recheck := time.NewTicker(r.cfg.RecheckInterval)
	defer recheck.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	<-retry.C
	backoff := r.retryBackoff()
	full := true
	for {
		if r.reconcile(full) {
			backoff = r.retryBackoff()
		} else {
			retry.Reset(backoff.Step())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.desired.Changed():
			full = false
		case <-recheck.C:
			full = true
		case <-retry.C:
			full = true
		}
	}
}

// retryBackoff paces full passes after a failure: 100 ms, doubling, at most
// the re-check interval.
func (r *Reconciler) retryBackoff() *wait.Backoff {
	return &wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Steps: math.MaxInt32, Cap: r.cfg.RecheckInterval}
}

// reconcile runs one pass and reports whether it left nothing failed. An
// incremental pass handles the objects whose revision moved since the last
// pass; it gives way to a full pass when the desired table can no longer
// say what moved, when the prune permission or a cluster's pod CIDRs changed
// (they decide what may be deleted and what is valid), or when asked.
func (r *Reconciler) reconcile(full bool) bool {
	start := time.Now()
	r.settleWant()
	if !full && r.lastOK {
		live, gone, ch, ok := r.desired.changedEntries(r.rev)
		if ok && ch.PruneAllowed == r.pruneAllowed && r.incrementalCIDRs(ch.PodCIDRs) {
			return r.incremental(start, ch, live, gone)
		}
	}
	return r.full(start)
}

// incrementalCIDRs reports whether an incremental pass can follow a change of
// the clusters' pod CIDRs: the CIDRs decide which objects are valid (ebpf), so
// a cluster whose CIDRs changed must either be new or gone (every object of
// it is then among the changes) or have no object processed yet.
func (r *Reconciler) incrementalCIDRs(now map[string][]netip.Prefix) bool {
	for c, ps := range now {
		if !slices.Equal(ps, r.podCIDRs[c]) && r.hasObjects(c) {
			return false
		}
	}
	return true
}

// incremental updates the changed objects and deletes the withdrawn ones,
// without reading the kernel: its cost follows the changes, not the table.
func (r *Reconciler) incremental(start time.Time, ch Changes, live, gone []Entry) bool {
	cidrsMoved := !podCIDRsEqual(ch.PodCIDRs, r.podCIDRs)
	r.podCIDRs = ch.PodCIDRs
	if len(r.want) > 0 && len(live) > 2*len(r.want) {
		// Many new objects (a cluster joining): grow the table once
		// rather than step by step.
		r.want = growMap(r.want, len(live))
	}
	upd := live[:0] // the valid changed objects, in revision order, filtered in place
	del := gone
	bad := make(map[netip.Prefix]Entry)
	for _, e := range live {
		p := e.Prefix
		if err := r.validate(e); err != nil {
			bad[p] = e
			r.dropWant(p)
			r.failed[p] = objStatus{entry: e, err: err, invalid: true}
			continue
		}
		upd = append(upd, e)
	}
	// An object that turned invalid loses what an earlier pass programmed.
	for p, e := range bad {
		del = append(del, Entry{Prefix: p.Masked(), Cluster: e.Cluster})
	}
	fam := entryFamilies(upd)
	r.wantFamilies |= fam
	sysErr := r.checkSysctls(fam)
	var gen uint64
	first := len(r.want) == 0
	if first {
		// The first objects (an agent start, the first cluster joining):
		// the changed objects are the valid set.
		r.wantGen++
		gen = r.wantGen
	}
	// r.programmed answers from the status before this pass.
	written, failed := r.b.write(upd, gen, r.programmed)
	if first {
		r.wantCount = countByCluster(slices.Values(upd))
		for _, e := range upd {
			if len(failed) == 0 {
				break
			}
			if err := failed[e.Prefix]; err != nil {
				r.failed[e.Prefix] = objStatus{entry: e, err: err}
			}
		}
	} else {
		for _, e := range upd {
			p := e.Prefix
			r.putWant(p, e)
			if err := failed[p]; err != nil {
				r.failed[p] = objStatus{entry: e, err: err}
			} else if len(r.failed) > 0 {
				delete(r.failed, p)
			}
		}
	}
	r.wantOK = r.wantOK && len(failed) == 0
	// Cluster routes after the objects they lead to, before deletions.
	var routeErr error
	if cidrsMoved {
		var n int
		n, routeErr = r.b.clusterRoutes(clusterCIDRs(ch.PodCIDRs), false)
		written += n
	}
	dfailed := r.b.delete(del)
	for _, e := range del {
		if _, stillBad := bad[e.Prefix]; !stillBad {
			r.forget(e.Prefix)
		}
		if err := dfailed[e.Prefix]; err != nil {
			r.undeleted[e.Prefix] = err
		} else {
			delete(r.undeleted, e.Prefix)
		}
	}
	r.rev = ch.Revision
	ok := r.finish(start, passIncremental, written+len(del), 0, ch.Oldest, errors.Join(sysErr, routeErr))
	if first {
		// Only the next pass needs the valid set's index: it is built on
		// another goroutine once this pass has published what it realised.
		r.wantIndexing.Go(func() { r.wantIndexed = byPrefix(upd) })
	}
	return ok
}

// full converges the whole desired table against a fresh read of the
// kernel: update everything (writing only what the read shows missing or
// different), delete what this process saw withdrawn, and prune what
// podmesh owns and nobody wants once prune is allowed. What it had to write
// or remove is the drift it found.
//
// The kernel is read on every full pass; the desired side is not: when the
// desired table's revision has not moved since the last pass, the valid
// objects that pass left in r.want are the desired set, nothing was
// withdrawn, and the per-object status only needs touching if some object
// failed now or before. Its cost then follows the kernel read, not the
// bookkeeping.
func (r *Reconciler) full(start time.Time) bool {
	var (
		oldest time.Time
		snap   Snapshot
		gone   []Entry // withdrawn while this process ran
	)
	moved := r.want == nil || r.desired.Version() != r.rev
	if moved {
		oldest = r.desired.oldestSince(r.rev)
		snap = r.desired.Snapshot()
		r.podCIDRs = snap.PodCIDRs
		invalid := make(map[netip.Prefix]objStatus)
		for p, e := range snap.Entries { // the valid ones, after this loop
			if err := r.validate(e); err != nil {
				invalid[p] = objStatus{entry: e, err: err, invalid: true}
				delete(snap.Entries, p)
				continue
			}
			r.clusterNames[e.ClusterID] = e.Cluster
		}
		// What the last pass knew and the table no longer holds.
		for p, e := range r.want {
			_, ok := snap.Entries[p]
			if _, bad := invalid[p]; !ok && !bad {
				gone = append(gone, Entry{Prefix: p, Cluster: e.Cluster})
			}
		}
		for p, st := range r.failed {
			_, ok := snap.Entries[p]
			if _, bad := invalid[p]; st.invalid && !ok && !bad {
				gone = append(gone, Entry{Prefix: p, Cluster: st.entry.Cluster})
			}
		}
		r.want, r.failed = snap.Entries, invalid
		r.wantGen++
		r.wantCount = countByCluster(maps.Values(r.want))
		r.wantFamilies = prefixFamilies(r.want)
	} else {
		snap = Snapshot{PodCIDRs: r.podCIDRs, Revision: r.rev, PruneAllowed: r.pruneAllowed}
	}
	want := r.want
	sysErr := r.checkSysctls(r.wantFamilies)
	if r.autoMTU {
		r.followUnderlayMTU()
	}

	var (
		written, removed int
		failed           map[netip.Prefix]error
		passErr          error
	)
	v, err := r.setupAndRead()
	if err != nil {
		passErr = err
	} else {
		written, failed = r.b.update(v, want, r.wantGen)
		// Withdrawn objects go even before prune is allowed.
		for p := range r.undeleted {
			if _, ok := want[p]; !ok {
				gone = append(gone, Entry{Prefix: p})
			}
		}
		dfailed := r.b.delete(gone)
		for _, e := range gone {
			if err := dfailed[e.Prefix]; err != nil {
				r.undeleted[e.Prefix] = err
			} else {
				delete(r.undeleted, e.Prefix)
			}
		}
		cidrs := clusterCIDRs(snap.PodCIDRs)
		routed, routeErr := r.b.clusterRoutes(cidrs, snap.PruneAllowed)
		var perr error
		removed, perr = r.b.prune(v, want, snap.PruneAllowed)
		removed += routed
		passErr = errors.Join(routeErr, perr)
	}
	allOK := passErr == nil && len(failed) == 0
	if !allOK || !r.wantOK {
		// Replace the failures of want's objects with this pass's.
		for p, st := range r.failed {
			if !st.invalid {
				delete(r.failed, p)
			}
		}
		if passErr != nil && failed == nil {
			for p, e := range want {
				r.failed[p] = objStatus{entry: e, err: passErr}
			}
		}
		for p, err := range failed {
			r.failed[p] = objStatus{entry: want[p], err: err}
		}
	}
	r.wantOK = allOK
	if err == nil && passErr == nil && snap.PruneAllowed && len(failed) == 0 {
		passErr = r.removeLeftovers()
	}
	r.rev, r.pruneAllowed = snap.Revision, snap.PruneAllowed
	r.metrics.outOfSync.Add(float64(written + removed))
	return r.finish(start, passFull, written+removed, written+removed, oldest, errors.Join(passErr, sysErr))
}

// settleWant installs the index of the first objects once it is built.
func (r *Reconciler) settleWant() {
	r.wantIndexing.Wait()
	if r.wantIndexed != nil {
		r.want, r.wantIndexed = r.wantIndexed, nil
	}
}

// setupAndRead makes the shared objects match and reads the kernel.
func (r *Reconciler) setupAndRead() (kernelView, error) {
	if err := r.b.setup(); err != nil {
		return nil, err
	}
	return r.b.read(r.want, r.wantGen)
}

// programmed reports whether the last pass that handled prefix p put it in
// the kernel (so the kernel object is podmesh's).
func (r *Reconciler) programmed(p netip.Prefix) bool {
	if _, ok := r.want[p]; !ok {
		return false
	}
	_, bad := r.failed[p]
	return !bad
}

const (
	passFull        = "full"
	passIncremental = "incremental"
)

// clusterCIDRs is the sorted union of the remote clusters' pod CIDRs.
func clusterCIDRs(by map[string][]netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, ps := range by {
		for _, p := range ps {
			if p.IsValid() {
				out = append(out, p.Masked())
			}
		}
	}
	sortPrefixes(out)
	return slices.Compact(out)
}

// growMap returns m, or a copy of it with room for n more entries when it
// is small.
func growMap[K comparable, V any](m map[K]V, n int) map[K]V {
	if len(m) >= n {
		return m
	}
	grown := make(map[K]V, len(m)+n)
	maps.Copy(grown, m)
	return grown
}

func podCIDRsEqual(a, b map[string][]netip.Prefix) bool {
	return maps.EqualFunc(a, b, func(x, y []netip.Prefix) bool { return slices.Equal(x, y) })
}

// validate rejects entries the datapath cannot realise; they are reported as
// failed and never reach the kernel.
func (r *Reconciler) validate(e Entry) error {
	if !e.Prefix.IsValid() {
		return errors.New("invalid prefix")
	}
	if !e.TunnelEndpoint.IsValid() {
		return errors.New("invalid tunnel endpoint")
	}
	ep := e.TunnelEndpoint.Unmap()
	if r.cfg.Mode != ModeNative && ep.Is4() != r.cfg.LocalIP.Is4() {
		return fmt.Errorf("tunnel endpoint %s is not of the underlay family of %s", ep, r.cfg.LocalIP)
	}
	if ep == r.cfg.LocalIP {
		return fmt.Errorf("tunnel endpoint %s is this node", ep)
	}
	if e.Prefix != e.Prefix.Masked() {
		return fmt.Errorf("prefix %s has host bits set", e.Prefix)
	}
	if r.cfg.Mode == ModeEBPF && !slices.ContainsFunc(r.podCIDRs[e.Cluster], func(c netip.Prefix) bool {
		return c.Bits() <= e.Prefix.Bits() && c.Contains(e.Prefix.Addr())
	}) {
		return fmt.Errorf("prefix %s is not within the pod CIDRs cluster %s declares %v: no route leads to it", e.Prefix, e.Cluster, r.podCIDRs[e.Cluster])
	}
	return nil
}

// Collectors returns the reconciler's Prometheus collectors, for the caller
// to register.
func (r *Reconciler) Collectors() []prometheus.Collector {
	return r.metrics.collectors()
}
