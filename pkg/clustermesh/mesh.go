package clustermesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Timing tunes how fast the mesh notices and retries. Zero fields take the
// defaults of DefaultTiming.
type Timing struct {
	// ScanInterval is the longest time between two scans of the config
	// directory (file system events wake a scan earlier).
	ScanInterval time.Duration
	// ProbeInterval is how often a connected remote's liveness (its
	// heartbeat key) is read.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one liveness read; a failed read marks the remote
	// not ready until a read succeeds. A dead or cut remote is reported
	// within ProbeInterval + ProbeTimeout.
	ProbeTimeout time.Duration
	// RequestTimeout bounds the other reads of a session (cluster config,
	// sync canaries), which may be larger; a session whose liveness reads
	// go unanswered this long ends and reconnects.
	RequestTimeout time.Duration
	// DialTimeout bounds connecting to a remote.
	DialTimeout time.Duration
	// KeepAlive is the gRPC keepalive ping interval (gRPC raises anything
	// under 10s to 10s); the liveness read is what detects failures fast.
	KeepAlive time.Duration
	// BackoffMin and BackoffMax bound the reconnect delay.
	BackoffMin, BackoffMax time.Duration
	// ReconnectWindow (cache mode) spreads the first reconnect after an
	// agent lost its cache session: it waits a uniformly random time in
	// [0, ReconnectWindow) before listing again, so the agents of a lost
	// replica re-list at about (agents of the replica) / ReconnectWindow
	// per second instead of all at once.
	ReconnectWindow time.Duration
	// HeartbeatStaleAfter makes a remote not ready when its heartbeat is older.
	HeartbeatStaleAfter time.Duration
}

// DefaultTiming is what the agent runs with: a remote that dies or whose
// path is cut is reported not ready within 1.5s.
var DefaultTiming = Timing{
	ScanInterval:        500 * time.Millisecond,
	ProbeInterval:       500 * time.Millisecond,
	ProbeTimeout:        time.Second,
	RequestTimeout:      5 * time.Second,
	DialTimeout:         5 * time.Second,
	KeepAlive:           10 * time.Second,
	BackoffMin:          time.Second,
	BackoffMax:          time.Minute,
	ReconnectWindow:     10 * time.Second,
	HeartbeatStaleAfter: meshapi.HeartbeatStaleAfter,
}

func (t Timing) withDefaults() Timing {
	d := DefaultTiming
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.ScanInterval, &d.ScanInterval}, {&t.ProbeInterval, &d.ProbeInterval},
		{&t.ProbeTimeout, &d.ProbeTimeout}, {&t.RequestTimeout, &d.RequestTimeout},
		{&t.DialTimeout, &d.DialTimeout}, {&t.KeepAlive, &d.KeepAlive},
		{&t.BackoffMin, &d.BackoffMin}, {&t.BackoffMax, &d.BackoffMax},
		{&t.ReconnectWindow, &d.ReconnectWindow},
		{&t.HeartbeatStaleAfter, &d.HeartbeatStaleAfter},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return t
}

// DesiredSet is the part of datapath.Desired the mesh writes to.
type DesiredSet interface {
	SetCluster(cluster string, podCIDRs []netip.Prefix, entries []datapath.Entry)
	RemoveCluster(cluster string)
	AllowPrune()
}

// StateSink receives every remote cluster's full validated state after each
// batch of changes, next to its entries (the cache tier mirrors it). The
// maps belong to the caller's session and change after the call returns:
// the sink must take what it needs before returning, and must not block.
type StateSink interface {
	SetClusterState(cc *meshapi.ClusterConfig, nodes map[string]*meshapi.Node, endpoints map[string]*meshapi.Endpoint)
}

// Options configure a Mesh.
type Options struct {
	LocalCluster   string
	LocalClusterID uint32
	LocalPodCIDRs  []netip.Prefix
	// LocalTunnelIP is the local node's tunnel source; a remote node is
	// reached at its first InternalIP of the same family.
	LocalTunnelIP netip.Addr
	// ConfigDir holds one etcd-client YAML file per remote cluster.
	ConfigDir string
	// CacheFile is the etcd-client YAML file of the local cluster's cache
	// (cache mode, NewCache); it replaces ConfigDir.
	CacheFile string
	// Dial, when set, opens the cache's connections (cache mode): the
	// agent resolves a Service name through the Kubernetes API with it.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Desired receives every remote cluster's entries (a *datapath.Desired).
	Desired DesiredSet
	// States, when set, also receives every remote cluster's validated
	// state, in the same order and under the same lock as Desired, so a
	// removal or refusal (Desired.RemoveCluster) is never overtaken.
	States StateSink
	// Services, when set, makes every session also list and watch the
	// remote's exported services and hand them over (the cache tier's
	// service importer); nil for agents, which never read services.
	Services ServiceSink
	// SyncTimeout allows pruning even if some remote has not synced by then.
	SyncTimeout time.Duration
	// Programmed, when set, reports the datapath's programmed prefix count
	// per cluster for status.
	Programmed func() map[string]int
	Timing     Timing
	Log        logrus.FieldLogger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Mesh is the set of remote clusters named by the config directory: it
// starts, restarts and stops one watcher per file, keeps the conflict
// registry, feeds the desired set and reports status.
type Mesh struct {
	opts     Options
	log      logrus.FieldLogger
	registry *Registry
	// wg tracks every goroutine the mesh starts.
	wg sync.WaitGroup

	// mu protects remotes, scanned, dirErr, pruneAllowed, pruneReason.
	mu           sync.Mutex
	remotes      map[string]*remote
	scanned      bool
	dirErr       string
	pruneAllowed bool
	pruneReason  string
	synced       chan struct{}
	// initial holds the remotes of the first directory scan that have not
	// yet presented their cluster config (or failed to); initialDone is
	// closed when it empties. Admission waits for it, so that at start the
	// registry decides with every reachable candidate known and a cluster
	// that loses a conflict never reaches the datapath, not even briefly.
	initial     map[string]bool
	initialDone chan struct{}
}

// New checks opts and returns a Mesh; Run starts it.
func New(opts Options) (*Mesh, error) {
	var errs []error
	if err := meshapi.ValidateClusterName(opts.LocalCluster); err != nil {
		errs = append(errs, fmt.Errorf("local cluster: %w", err))
	}
	if err := meshapi.ValidateClusterID(opts.LocalClusterID); err != nil {
		errs = append(errs, fmt.Errorf("local cluster: %w", err))
	}
	if err := meshapi.ValidatePodCIDRs(opts.LocalPodCIDRs); err != nil {
		errs = append(errs, fmt.Errorf("local pod CIDRs: %w", err))
	}
	if opts.ConfigDir == "" {
		errs = append(errs, errors.New("no config directory"))
	}
	if opts.Desired == nil {
		errs = append(errs, errors.New("no desired set"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("clustermesh options: %w", err)
	}
	if opts.Log == nil {
		opts.Log = logrus.New()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Timing = opts.Timing.withDefaults()
	return &Mesh{
		opts:        opts,
		log:         opts.Log,
		registry:    NewRegistry(opts.LocalCluster, opts.LocalClusterID, opts.LocalPodCIDRs),
		remotes:     make(map[string]*remote),
		synced:      make(chan struct{}),
		initial:     make(map[string]bool),
		initialDone: make(chan struct{}),
	}, nil
}

func (m *Mesh) now() time.Time { return m.opts.Now() }

// Synced is closed once pruning is allowed: every configured remote synced,
// or the sync timeout passed.
func (m *Mesh) Synced() <-chan struct{} { return m.synced }

// Run watches the config directory and runs the remotes until ctx is done.
// The desired set keeps its entries when Run returns: the kernel state stays.
func (m *Mesh) Run(ctx context.Context) error {
	if m.opts.SyncTimeout > 0 {
		m.wg.Go(func() {
			if ctx.Err() == nil && sleepCtx(ctx, m.opts.SyncTimeout) {
				m.allowPrune(fmt.Sprintf("sync timeout %s passed", m.opts.SyncTimeout))
			}
		})
	}
	watchDir(ctx, m.opts.ConfigDir, m.opts.Timing.ScanInterval, m.log, func() { m.reconcileFiles(ctx) })
	m.mu.Lock()
	for _, r := range m.remotes {
		m.stopLocked(r)
	}
	m.mu.Unlock()
	m.wg.Wait()
	return ctx.Err()
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// reconcileFiles makes the running remotes match the config directory.
func (m *Mesh) reconcileFiles(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	files, err := ScanDir(m.opts.ConfigDir, m.opts.LocalCluster)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		// Keep everything: an unreadable directory is not a removal.
		if m.dirErr != err.Error() {
			m.log.WithError(err).Warn("Cannot read the clustermesh config directory; keeping remote clusters as they are")
		}
		m.dirErr = err.Error()
		return
	}
	m.dirErr = ""
	for name, r := range m.remotes {
		if _, ok := files[name]; !ok {
			m.removeLocked(r)
		}
	}
	for name, f := range files {
		r, ok := m.remotes[name]
		switch {
		case !ok:
			r = newRemote(m, name)
			m.remotes[name] = r
			r.log.Info("Remote cluster configured")
			m.startLocked(ctx, r, f)
		case r.hash != f.Hash:
			r.log.Info("Remote cluster file changed; reconnecting with the new settings")
			m.startLocked(ctx, r, f)
		}
	}
	if !m.scanned {
		m.scanned = true
		for name, r := range m.remotes {
			if r.cancel != nil { // a session runs; a broken file presents nothing
				m.initial[name] = true
			}
		}
		m.presentedLocked("")
	}
	m.maybeAllowPruneLocked()
}

// removeLocked withdraws every entry of a remote whose file is gone.
func (m *Mesh) removeLocked(r *remote) {
	delete(m.remotes, r.name)
	m.presentedLocked(r.name)
	m.stopLocked(r)
	m.opts.Desired.RemoveCluster(r.name)
	m.removeServicesLocked(r.name)
	m.registry.Release(r.name)
	r.log.Info("Remote cluster file removed; withdrew its entries")
}

// currentLocked reports whether gen is r's running generation.
func (m *Mesh) currentLocked(r *remote, gen uint64) bool {
	return m.remotes[r.name] == r && r.rec.generation() == gen
}

// push replaces a remote's entries and declared pod CIDRs (from its
// admitted cluster-config) if gen is still its current generation; States,
// when set, gets the state the entries were computed from.
func (m *Mesh) push(r *remote, gen uint64, state *clusterState, entries []datapath.Entry) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.currentLocked(r, gen) || r.evict == nil { // superseded, or displaced
		return false
	}
	m.opts.Desired.SetCluster(r.name, state.cfg.PodCIDRs, entries)
	if m.opts.States != nil {
		m.opts.States.SetClusterState(state.cfg, state.nodes, state.endpoints)
	}
	m.pushServicesLocked(state)
	return true
}

// errSuperseded ends a session whose generation is no longer current.
var errSuperseded = errors.New("superseded by a newer version of the file, or removed")

// presented records that a remote of the first scan has read its cluster
// config, or failed to.
func (m *Mesh) presented(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.presentedLocked(name)
}

func (m *Mesh) presentedLocked(name string) {
	delete(m.initial, name)
	if len(m.initial) == 0 && m.scanned {
		select {
		case <-m.initialDone:
		default:
			close(m.initialDone)
		}
	}
}

// admit asks the registry to admit cc for r if gen is still current; a
// refusal withdraws r's entries. evict ends the session should the cluster
// be displaced later. Clusters that cc displaces are withdrawn and their
// sessions ended. Holding m.mu orders it with removals, so a winding-down
// generation can never claim for a cluster that is gone.
//
// cc is a candidate from the moment it is offered; at start, admission
// waits until every remote of the first scan has presented its config (or
// failed to), at most wait.
func (m *Mesh) admit(ctx context.Context, r *remote, gen uint64, cc *meshapi.ClusterConfig, evict context.CancelCauseFunc, wait time.Duration) error {
	if err := m.offer(r, gen, cc); err != nil {
		return err
	}
	t := time.NewTimer(wait)
	select {
	case <-m.initialDone:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.currentLocked(r, gen) {
		return errSuperseded
	}
	if v := m.registry.Verdict(r.name); v != nil {
		return m.refusedLocked(r, gen, &ConflictError{*v})
	}
	r.evict = func(err error) { evict(err) }
	return nil
}

// offer makes cc r's candidate and applies the registry's decision.
func (m *Mesh) offer(r *remote, gen uint64, cc *meshapi.ClusterConfig) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.currentLocked(r, gen) {
		return errSuperseded
	}
	m.presentedLocked(r.name)
	displaced, err := m.registry.Offer(cc)
	for _, name := range displaced {
		if d := m.remotes[name]; d != nil && d != r {
			m.displaceLocked(d)
		}
	}
	if err != nil {
		return m.refusedLocked(r, gen, err)
	}
	return nil
}

func (m *Mesh) refusedLocked(r *remote, gen uint64, err error) error {
	r.evict = nil
	m.withdrawLocked(r, gen)
	r.log.WithError(err).Warn("Remote cluster refused")
	return fmt.Errorf("%w: %w", errRefused, err)
}

// displaceLocked withdraws a cluster the registry no longer admits and ends
// its session; its next session is refused until the winner is released.
func (m *Mesh) displaceLocked(d *remote) {
	v := m.registry.Verdict(d.name)
	if v == nil {
		return
	}
	err := fmt.Errorf("%w: %w", errRefused, &ConflictError{*v})
	gen := d.rec.generation()
	m.withdrawLocked(d, gen)
	// The session's end records the refusal as its error; until then:
	d.rec.update(gen, func() { d.rec.up, d.rec.phase = false, "displaced: "+err.Error() })
	d.log.WithError(err).Warn("Remote cluster displaced by a cluster that ranks first; withdrew its entries")
	if d.evict != nil {
		d.evict(err)
		d.evict = nil
	}
}

// refuse releases r's claim and withdraws its entries if gen is current.
func (m *Mesh) refuse(r *remote, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.currentLocked(r, gen) {
		return
	}
	r.evict = nil
	m.registry.Release(r.name)
	m.withdrawLocked(r, gen)
}

func (m *Mesh) withdrawLocked(r *remote, gen uint64) {
	m.opts.Desired.RemoveCluster(r.name)
	m.removeServicesLocked(r.name)
	r.rec.update(gen, func() { r.rec.nodes, r.rec.endpoints, r.rec.prefixes = 0, 0, 0 })
}

func (m *Mesh) remoteSynced(r *remote, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r.rec.update(gen, func() { r.rec.everSynced = true })
	m.maybeAllowPruneLocked()
}

func (m *Mesh) maybeAllowPruneLocked() {
	if m.pruneAllowed || !m.scanned {
		return
	}
	for _, r := range m.remotes {
		r.rec.mu.Lock()
		synced := r.rec.everSynced
		r.rec.mu.Unlock()
		if !synced {
			return
		}
	}
	m.allowPruneLocked(fmt.Sprintf("all %d remote clusters synced", len(m.remotes)))
}

func (m *Mesh) allowPrune(reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.allowPruneLocked(reason)
}

func (m *Mesh) allowPruneLocked(reason string) {
	if m.pruneAllowed {
		return
	}
	m.pruneAllowed = true
	m.pruneReason = reason
	m.opts.Desired.AllowPrune()
	close(m.synced)
	m.log.WithField("reason", reason).Info("Initial sync complete; the datapath may prune stale entries")
}
