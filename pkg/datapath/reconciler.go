package datapath

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
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
	// Errors holds one message per failed prefix (bounded).
	Errors map[string]string
	// LastError is the last reconcile's error, empty when it fully succeeded.
	LastError     string
	LastReconcile time.Time
	// LastDuration is how long the last reconcile pass took, LastPass
	// whether it was a "full" pass (re-read the kernel) or a "delta" pass.
	LastDuration time.Duration
	LastPass     string
	// LastWrites counts the kernel objects the last pass wrote or deleted;
	// a pass over a converged kernel writes nothing.
	LastWrites      int
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
	ns      nsRunner
	metrics *metrics

	// mu protects status.
	mu     sync.Mutex
	status Status

	// Owned by the Run goroutine.
	applied        map[netip.Prefix]Entry // want of the last fully successful pass; nil: next pass is full
	appliedPrune   bool                   // PruneAllowed of that pass
	countBy        map[string]int         // entries of applied per cluster
	owned          map[netip.Prefix]bool  // prefixes this process programmed
	lastApplied    uint64
	rpFilterLogged bool
	autoMTU        bool // Config.MTU was 0: follow the MTU of the link holding LocalIP
	// sysctl is nsSysctl; unit tests replace it.
	sysctl        func(name, set string) (was string, err error)
	leftoversDone bool
	clusterNames  map[uint32]string
}

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
	bs := base{h: r.h, ns: r.ns, log: log, local: cfg.LocalIP, port: cfg.TunnelPort, mtu: cfg.MTU}
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
		owned:        make(map[netip.Prefix]bool),
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

// reconcile runs one convergence pass and reports whether it fully succeeded.
// A full pass re-reads the kernel; otherwise, when the previous pass fully
// succeeded under the same prune permission, only the delta is applied.
func (r *Reconciler) reconcile(full bool) bool {
	start := time.Now()
	if !full && r.applied != nil {
		if ok, done := r.reconcileDelta(start); done {
			return ok
		}
	}
	return r.reconcileFull(start)
}

// reconcileDelta applies the Desired changes since the last fully applied
// version to the kernel without re-reading it, in time proportional to the
// changes. done is false when it cannot (the change journal was outrun, the
// prune permission changed, an entry is invalid, or the backend failed or
// asked for it): the caller then runs a full pass, which re-reads the kernel
// and reports per prefix.
func (r *Reconciler) reconcileDelta(start time.Time) (ok, done bool) {
	changes, version, prune, jok := r.desired.ChangesSince(r.lastApplied)
	if !jok || prune != r.appliedPrune {
		return false, false
	}
	var d delta
	touched := make(map[netip.Prefix]Entry)
	for _, c := range changes {
		if c.Prefix != c.Prefix.Masked() {
			return false, false
		}
		if c.Present {
			if r.validate(c.Entry) != nil {
				return false, false
			}
			touched[c.Prefix] = c.Entry
		}
	}
	for _, c := range changes {
		p := c.Prefix
		old, had := r.applied[p]
		if had {
			r.countBy[old.Cluster]--
			if r.countBy[old.Cluster] == 0 {
				delete(r.countBy, old.Cluster)
			}
		}
		if !c.Present {
			if had {
				d.remove = append(d.remove, old)
				delete(r.applied, p)
			}
			continue
		}
		e := c.Entry
		switch {
		case !had:
			d.add = append(d.add, e)
		case old.TunnelEndpoint != e.TunnelEndpoint || old.ClusterID != e.ClusterID:
			d.change = append(d.change, e)
			d.stale = append(d.stale, old)
		}
		r.applied[p] = e
		r.countBy[e.Cluster]++
		r.clusterNames[e.ClusterID] = e.Cluster
	}
	d.want = r.applied
	sysErr := r.checkSysctls(touched)
	var res syncResult
	if !d.empty() {
		res = r.b.apply(d)
	}
	for _, p := range res.removed {
		delete(r.owned, p)
	}
	if sysErr != nil || res.err != nil || res.needFull || len(res.failed) > 0 {
		r.applied = nil
		return false, false
	}
	for p := range touched {
		r.owned[p] = true
	}
	traffic, drops, terr := r.b.traffic()
	now := time.Now()
	if version > r.lastApplied {
		if t, found := r.desired.ChangedAfter(r.lastApplied); found {
			r.metrics.convergence.Observe(now.Sub(t).Seconds())
		}
	}
	r.lastApplied = version
	programmed := maps.Clone(r.countBy)
	r.metrics.setProgrammed(programmed, nil)
	r.metrics.setTraffic(traffic, r.clusterNames, drops)
	if terr != nil {
		r.metrics.reconcileErrors.Inc()
	}

	r.mu.Lock()
	r.status.Programmed = programmed
	r.status.Failed = map[string]int{}
	r.status.Errors = map[string]string{}
	r.status.LastReconcile = now
	r.status.LastDuration = now.Sub(start)
	r.status.LastPass = "delta"
	r.status.LastWrites = res.writes
	r.status.AppliedVersion = version
	if terr != nil {
		r.status.LastError = terr.Error()
		r.status.ReconcileErrors++
	} else {
		r.status.LastError = ""
	}
	if traffic != nil {
		r.status.Traffic = traffic
	}
	if drops != nil {
		r.status.Drops = drops
	}
	r.mu.Unlock()
	r.log.WithFields(logrus.Fields{"pass": "delta", "version": version, "changes": len(changes), "writes": res.writes, "removed": len(res.removed), "duration": now.Sub(start)}).Debug("Datapath reconciled")
	return terr == nil, true
}

// reconcileFull converges the whole desired set against a fresh read of the
// kernel and recomputes the status from scratch.
func (r *Reconciler) reconcileFull(start time.Time) bool {
	snap := r.desired.Snapshot()
	want := make(map[netip.Prefix]Entry, len(snap.Entries))
	invalid := make(map[netip.Prefix]error)
	for p, e := range snap.Entries {
		if err := r.validate(e); err != nil {
			invalid[p.Masked()] = err
			continue
		}
		want[p.Masked()] = e
		r.clusterNames[e.ClusterID] = e.Cluster
	}
	sysErr := r.checkSysctls(want)

	canDelete := func(p netip.Prefix) bool {
		if _, ok := want[p]; ok {
			return false
		}
		return snap.PruneAllowed || r.owned[p]
	}
	if r.autoMTU {
		r.followUnderlayMTU()
	}
	const kind = "full"
	res := r.b.sync(want, canDelete)
	for _, p := range res.removed {
		delete(r.owned, p)
	}
	failed := make(map[netip.Prefix]error, len(res.failed)+len(invalid))
	maps.Copy(failed, invalid)
	for p, err := range res.failed {
		if err != nil {
			failed[p] = err
		}
	}
	programmed := make(map[string]int)
	failedBy := make(map[string]int)
	for p, e := range snap.Entries {
		p = p.Masked()
		_, bad := failed[p]
		if res.err != nil || bad {
			failedBy[e.Cluster]++
			if res.err != nil && !bad {
				failed[p] = res.err
			}
			continue
		}
		programmed[e.Cluster]++
		r.owned[p] = true
	}
	traffic, drops, terr := r.b.traffic()
	var lerr error
	if snap.PruneAllowed && res.err == nil && len(res.failed) == 0 {
		lerr = r.removeLeftovers()
	}

	err := errors.Join(res.err, sysErr, terr, lerr)
	if len(failed) > 0 && res.err == nil {
		err = errors.Join(err, fmt.Errorf("%d prefixes failed", len(failed)))
	}
	ok := err == nil
	now := time.Now()
	if ok && snap.Version > r.lastApplied {
		if t, found := r.desired.ChangedAfter(r.lastApplied); found {
			r.metrics.convergence.Observe(now.Sub(t).Seconds())
		}
	}
	if ok {
		r.lastApplied = snap.Version
		r.applied, r.appliedPrune, r.countBy = want, snap.PruneAllowed, maps.Clone(programmed)
	} else {
		r.applied = nil
	}

	r.metrics.setProgrammed(programmed, failedBy)
	if !ok {
		r.metrics.reconcileErrors.Inc()
	}
	r.metrics.setTraffic(traffic, r.clusterNames, drops)

	r.mu.Lock()
	r.status.Programmed = programmed
	r.status.Failed = failedBy
	r.status.Errors = make(map[string]string)
	for _, p := range sortedPrefixes(failed) {
		if len(r.status.Errors) == errorsKept {
			break
		}
		r.status.Errors[p.String()] = failed[p].Error()
	}
	r.status.LastReconcile = now
	r.status.LastDuration = now.Sub(start)
	r.status.LastPass = kind
	r.status.LastWrites = res.writes
	if ok {
		r.status.LastError = ""
		r.status.AppliedVersion = snap.Version
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

	fields := logrus.Fields{"pass": kind, "version": snap.Version, "prefixes": len(want), "writes": res.writes, "removed": len(res.removed), "duration": time.Since(start)}
	if ok {
		r.log.WithFields(fields).Debug("Datapath reconciled")
	} else {
		r.log.WithFields(fields).WithError(err).Warn("Datapath reconcile incomplete")
	}
	return ok
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
