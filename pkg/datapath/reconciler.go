package datapath

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/podmesh/podmesh/bpf"
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

// Counter is a packet and byte count.
type Counter struct {
	Packets, Bytes uint64
}

// Status is a point-in-time view of the reconciler.
type Status struct {
	Mode string
	// Programmed and Failed count the desired prefixes per remote cluster
	// name that are (or could not be) realised in the kernel.
	Programmed map[string]int
	Failed     map[string]int
	// Errors holds the error of each failed object, by prefix (bounded).
	Errors map[string]string
	// LastError is the last reconcile's error, empty when it fully succeeded.
	LastError     string
	LastReconcile time.Time
	// LastDuration is how long the last reconcile pass took, LastPass
	// whether it was a "full" pass (re-read the kernel) or an "incremental"
	// one (only the objects whose revision moved).
	LastDuration time.Duration
	LastPass     string
	// LastWrites counts the kernel objects the last pass wrote or deleted;
	// a pass over a converged kernel writes nothing.
	LastWrites int
	// LastOutOfSync is how many kernel objects the last full pass found
	// missing, different or unwanted (and repaired); OutOfSyncTotal sums
	// it over every full pass.
	LastOutOfSync   int
	OutOfSyncTotal  uint64
	ReconcileErrors uint64
	// AppliedVersion is the Desired version the kernel fully realises (0
	// until one reconcile succeeded without failures).
	AppliedVersion uint64
	// Traffic holds tx counters per remote cluster ID (ebpf mode only).
	Traffic map[uint32]Counter
	// Drops holds the program's drop counters by reason: "miss" (no ipcache
	// entry), "malformed", "tunnel_key", "not_configured" (ebpf mode only).
	Drops map[string]Counter
}

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
	rev            uint64                     // desired revision the last pass processed
	objs           map[netip.Prefix]objStatus // per-object status of every live desired object processed
	count          map[string]*clusterCount   // objs summed per cluster
	undeleted      map[netip.Prefix]error     // withdrawn objects whose delete failed; retried by every full pass
	podCIDRs       map[string][]netip.Prefix  // the remote clusters' pod CIDRs as of the last full pass
	pruneAllowed   bool                       // PruneAllowed as of the last full pass
	lastOK         bool                       // the last pass left nothing failed; else the next one is full
	rpFilterLogged bool
	autoMTU        bool // Config.MTU was 0: follow the MTU of the link holding LocalIP
	// sysctl is nsSysctl; unit tests replace it.
	sysctl        func(name, set string) (was string, err error)
	leftoversDone bool
	clusterNames  map[uint32]string
}

// objStatus is the status of one desired object: its entry as last
// processed, and the error that kept it from the kernel (nil: programmed).
type objStatus struct {
	entry Entry
	err   error
}

type clusterCount struct{ programmed, failed int }

// errorsKept bounds Status.Errors.
const errorsKept = 64

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
		l.Out = discard{}
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
		objs:         make(map[netip.Prefix]objStatus),
		count:        make(map[string]*clusterCount),
		undeleted:    make(map[netip.Prefix]error),
		clusterNames: make(map[uint32]string),
		metrics:      newMetrics(),
	}
	r.sysctl = r.nsSysctl
	r.status.Mode = cfg.Mode
	return r
}

// nsSysctl reads a sysctl in the reconciler's namespace and, when set is
// not empty and differs, writes it; it returns the value found.
func (r *Reconciler) nsSysctl(name, set string) (string, error) {
	var v string
	err := r.ns.do(func() error {
		var err error
		if v, err = readSysctl(name); err != nil || set == "" || v == set {
			return err
		}
		return writeSysctl(name, set)
	})
	return v, err
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

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
	backoff := time.Duration(0)
	full := true
	for {
		ok := r.reconcile(full)
		if ok {
			backoff = 0
		} else {
			backoff = nextBackoff(backoff, r.cfg.RecheckInterval)
			retry.Reset(backoff)
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

func nextBackoff(cur, max time.Duration) time.Duration {
	const first = 100 * time.Millisecond
	if cur == 0 {
		cur = first
	} else {
		cur *= 2
	}
	return min(cur, max)
}

// reconcile runs one pass and reports whether it left nothing failed. An
// incremental pass handles the objects whose revision moved since the last
// pass; it gives way to a full pass when the desired table can no longer
// say what moved, when the prune permission or a cluster's pod CIDRs changed
// (they decide what may be deleted and what is valid), or when asked.
func (r *Reconciler) reconcile(full bool) bool {
	start := time.Now()
	if !full && r.lastOK {
		ch, ok := r.desired.Changes(r.rev)
		if ok && ch.PruneAllowed == r.pruneAllowed && r.incrementalCIDRs(ch.PodCIDRs) {
			return r.incremental(start, ch)
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
		if !slices.Equal(ps, r.podCIDRs[c]) && r.count[c] != nil {
			return false
		}
	}
	return true
}

// incremental updates the changed objects and deletes the withdrawn ones,
// without reading the kernel: its cost follows the changes, not the table.
func (r *Reconciler) incremental(start time.Time, ch Changes) bool {
	cidrsMoved := !podCIDRsEqual(ch.PodCIDRs, r.podCIDRs)
	r.podCIDRs = ch.PodCIDRs
	upd := make(map[netip.Prefix]Entry, len(ch.Objects))
	var del []Entry
	bad := make(map[netip.Prefix]Entry)
	for _, o := range ch.Objects {
		p := o.Entry.Prefix
		if o.Deleted {
			del = append(del, o.Entry)
			continue
		}
		if err := r.validate(o.Entry); err != nil {
			bad[p] = o.Entry
			r.setStatus(p, o.Entry, err)
			continue
		}
		upd[p] = o.Entry
	}
	// An object that turned invalid loses what an earlier pass programmed.
	for p, e := range bad {
		del = append(del, Entry{Prefix: p.Masked(), Cluster: e.Cluster})
	}
	sysErr := r.checkSysctls(upd)
	written, failed := r.b.update(nil, upd, r.programmed)
	for p, e := range upd {
		r.setStatus(p, e, failed[p])
	}
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
	return r.finish(start, passIncremental, written+len(del), 0, ch.Oldest, errors.Join(sysErr, routeErr))
}

// full converges the whole desired table against a fresh read of the
// kernel: update everything (writing only what the read shows missing or
// different), delete what this process saw withdrawn, and prune what
// podmesh owns and nobody wants once prune is allowed. What it had to write
// or remove is the drift it found.
func (r *Reconciler) full(start time.Time) bool {
	oldest := r.desired.oldestSince(r.rev)
	snap := r.desired.Snapshot()
	invalid := make(map[netip.Prefix]error)
	invalidEntry := make(map[netip.Prefix]Entry)
	r.podCIDRs = snap.PodCIDRs
	want := snap.Entries // the valid ones, after this loop
	for p, e := range want {
		if err := r.validate(e); err != nil {
			invalid[p], invalidEntry[p] = err, e
			delete(want, p)
			continue
		}
		r.clusterNames[e.ClusterID] = e.Cluster
	}
	sysErr := r.checkSysctls(want)
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
		written, failed = r.b.update(v, want, r.programmed)
		// Withdrawn while this process ran: delete, even before prune is
		// allowed.
		var gone []Entry
		for p, st := range r.objs {
			_, ok := want[p]
			if _, bad := invalid[p]; !ok && !bad {
				gone = append(gone, Entry{Prefix: p, Cluster: st.entry.Cluster})
			}
		}
		for p := range r.undeleted {
			if _, ok := want[p]; !ok {
				gone = append(gone, Entry{Prefix: p})
			}
		}
		dfailed := r.b.delete(gone)
		for _, e := range gone {
			r.forget(e.Prefix)
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
	for p, e := range invalidEntry {
		r.setStatus(p, e, invalid[p])
	}
	for p, e := range want {
		if passErr != nil && failed == nil {
			r.setStatus(p, e, passErr)
		} else {
			r.setStatus(p, e, failed[p])
		}
	}
	if err == nil && passErr == nil && snap.PruneAllowed && len(failed) == 0 {
		passErr = r.removeLeftovers()
	}
	r.rev, r.pruneAllowed = snap.Revision, snap.PruneAllowed
	r.metrics.outOfSync.Add(float64(written + removed))
	return r.finish(start, passFull, written+removed, written+removed, oldest, errors.Join(passErr, sysErr))
}

// setupAndRead makes the shared objects match and reads the kernel.
func (r *Reconciler) setupAndRead() (kernelView, error) {
	if err := r.b.setup(); err != nil {
		return nil, err
	}
	return r.b.read()
}

// programmed reports whether the last pass that handled prefix p put it in
// the kernel (so the kernel object is podmesh's).
func (r *Reconciler) programmed(p netip.Prefix) bool {
	st, ok := r.objs[p]
	return ok && st.err == nil
}

// setStatus records the status of one live object and keeps the per-cluster
// sums.
func (r *Reconciler) setStatus(p netip.Prefix, e Entry, err error) {
	if st, ok := r.objs[p]; ok && st.entry == e && st.err == err {
		return
	}
	r.forget(p)
	r.objs[p] = objStatus{entry: e, err: err}
	c := r.count[e.Cluster]
	if c == nil {
		c = &clusterCount{}
		r.count[e.Cluster] = c
	}
	if err != nil {
		c.failed++
	} else {
		c.programmed++
	}
}

// forget drops the status of an object.
func (r *Reconciler) forget(p netip.Prefix) {
	st, ok := r.objs[p]
	if !ok {
		return
	}
	delete(r.objs, p)
	c := r.count[st.entry.Cluster]
	if st.err != nil {
		c.failed--
	} else {
		c.programmed--
	}
	if c.failed == 0 && c.programmed == 0 {
		delete(r.count, st.entry.Cluster)
	}
}

const (
	passFull        = "full"
	passIncremental = "incremental"
)

// finish publishes a pass's outcome to status, metrics and the log.
func (r *Reconciler) finish(start time.Time, kind string, writes, outOfSync int, oldest time.Time, passErr error) bool {
	programmed := make(map[string]int, len(r.count))
	failedBy := make(map[string]int)
	nFailed := 0
	for c, n := range r.count {
		if n.programmed > 0 {
			programmed[c] = n.programmed
		}
		if n.failed > 0 {
			failedBy[c] = n.failed
			nFailed += n.failed
		}
	}
	errs := make(map[string]string)
	if nFailed+len(r.undeleted) > 0 {
		failed := make(map[netip.Prefix]error, nFailed+len(r.undeleted))
		for p, st := range r.objs {
			if st.err != nil {
				failed[p.Masked()] = st.err
			}
		}
		maps.Copy(failed, r.undeleted)
		for _, p := range sortedPrefixes(failed) {
			if len(errs) == errorsKept {
				break
			}
			errs[p.String()] = failed[p].Error()
		}
		passErr = errors.Join(passErr, fmt.Errorf("%d prefixes failed", nFailed+len(r.undeleted)))
	}
	traffic, drops, terr := r.b.traffic()
	err := errors.Join(passErr, terr)
	ok := err == nil
	r.lastOK = passErr == nil
	now := time.Now()
	if ok && !oldest.IsZero() {
		r.metrics.convergence.Observe(now.Sub(oldest).Seconds())
	}
	r.metrics.setProgrammed(programmed, failedBy)
	r.metrics.setTraffic(traffic, r.clusterNames, drops)
	if !ok {
		r.metrics.reconcileErrors.Inc()
	}

	r.mu.Lock()
	r.status.Programmed = programmed
	r.status.Failed = failedBy
	r.status.Errors = errs
	r.status.LastReconcile = now
	r.status.LastDuration = now.Sub(start)
	r.status.LastPass = kind
	r.status.LastWrites = writes
	if kind == passFull {
		r.status.LastOutOfSync = outOfSync
		r.status.OutOfSyncTotal += uint64(outOfSync)
	}
	if ok {
		r.status.LastError = ""
		r.status.AppliedVersion = r.rev
	} else {
		r.status.LastError = err.Error()
		r.status.ReconcileErrors++
	}
	if traffic != nil {
		r.status.Traffic = traffic
	}
	if drops != nil {
		r.status.Drops = drops
	}
	r.mu.Unlock()

	fields := logrus.Fields{"pass": kind, "revision": r.rev, "objects": len(r.objs), "writes": writes, "duration": now.Sub(start)}
	if kind == passFull {
		fields["out_of_sync"] = outOfSync
	}
	if ok {
		r.log.WithFields(fields).Debug("Datapath reconciled")
	} else {
		r.log.WithFields(fields).WithError(err).Warn("Datapath reconcile incomplete")
	}
	return ok
}

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

func podCIDRsEqual(a, b map[string][]netip.Prefix) bool {
	return maps.EqualFunc(a, b, func(x, y []netip.Prefix) bool { return slices.Equal(x, y) })
}

// followUnderlayMTU re-reads the MTU of the link holding LocalIP; when it
// changed, the full pass that follows rewrites the device and route MTUs.
func (r *Reconciler) followUnderlayMTU() {
	mtu, err := linkMTUFor(r.h, r.cfg.LocalIP)
	if err != nil {
		r.log.WithError(err).Warn("Cannot re-read the underlay MTU; keeping the last one")
		return
	}
	if old := r.b.underlayMTU(); mtu != old && mtu >= 576+encapOverhead(r.cfg.LocalIP) {
		r.log.WithFields(logrus.Fields{"was": old, "now": mtu}).Info("Underlay MTU changed; updating tunnel and route MTUs")
		r.b.setUnderlayMTU(mtu)
	}
}

// removeLeftovers removes what another routing mode left behind (the agent
// ran in another mode before): the bpf pins under BPFRoot unless the mode is
// ebpf, and podmesh_vxlan in native mode. It runs once prune is allowed and a
// full pass has put this mode's routes in place, so a mode switch withdraws
// nothing the desired set still holds.
func (r *Reconciler) removeLeftovers() error {
	if r.leftoversDone {
		return nil
	}
	ifindex := 0
	if l, err := r.h.LinkByName(DeviceName); err == nil {
		ifindex = l.Attrs().Index
	} else if !isLinkNotFound(err) {
		return fmt.Errorf("find %s: %w", DeviceName, err)
	}
	var errs []error
	if r.cfg.Mode != ModeEBPF {
		if _, err := os.Stat(r.cfg.BPFRoot); err == nil {
			r.log.WithField("dir", r.cfg.BPFRoot).Info("Removing the ebpf datapath left by another routing mode")
			if err := r.ns.do(func() error { return bpf.Remove(r.cfg.BPFRoot, ifindex) }); err != nil {
				errs = append(errs, fmt.Errorf("remove bpf datapath under %s: %w", r.cfg.BPFRoot, err))
			}
		}
	}
	if r.cfg.Mode == ModeNative && ifindex != 0 {
		r.log.WithField("device", DeviceName).Info("Removing the tunnel device left by another routing mode")
		if err := r.h.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", DeviceName, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.leftoversDone = true
	return nil
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

// checkSysctls makes sure forwarding is on for every family the desired set
// uses, on every pass (so a setting turned off by hand comes back). It
// changes a setting only when it is off, and says so in the log. rp_filter
// needs no change: tunnel-mode routes point at podmesh_vxlan, where
// decapsulated return traffic arrives, and native routes at the underlay
// link, so strict reverse-path checks pass; its value is logged once.
func (r *Reconciler) checkSysctls(want map[netip.Prefix]Entry) error {
	has4, has6 := false, false
	for p := range want {
		if p.Addr().Is4() {
			has4 = true
		} else {
			has6 = true
		}
		if has4 && has6 {
			break
		}
	}
	var need []string
	if has4 {
		need = append(need, "net.ipv4.ip_forward")
	}
	if has6 {
		need = append(need, "net.ipv6.conf.all.forwarding")
	}
	var errs []error
	for _, name := range need {
		v, err := r.sysctl(name, "")
		if err == nil && v != "1" {
			r.log.WithFields(logrus.Fields{"sysctl": name, "was": v}).Info("Enabling forwarding: remote pod traffic is routed through this node")
			_, err = r.sysctl(name, "1")
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if !r.rpFilterLogged && len(want) > 0 {
		r.rpFilterLogged = true
		if v, err := r.sysctl("net.ipv4.conf.all.rp_filter", ""); err == nil {
			r.log.WithField("rp_filter", v).Info("Remote prefix routes point at the device return traffic arrives on, so the reverse-path filter passes it")
		}
	}
	return errors.Join(errs...)
}

// Status returns a copy of the current status.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Programmed = maps.Clone(s.Programmed)
	s.Failed = maps.Clone(s.Failed)
	s.Errors = maps.Clone(s.Errors)
	s.Traffic = maps.Clone(s.Traffic)
	s.Drops = maps.Clone(s.Drops)
	return s
}

// Collectors returns the reconciler's Prometheus collectors, for the caller
// to register.
func (r *Reconciler) Collectors() []prometheus.Collector {
	return r.metrics.collectors()
}
