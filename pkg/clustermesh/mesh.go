package clustermesh

import (
	"context"
	"errors"
	"fmt"
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
	// directory (inotify wakes a scan earlier).
	ScanInterval time.Duration
	// ProbeInterval is how often a connected remote's heartbeat is read.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one read; a failed read ends the session.
	ProbeTimeout time.Duration
	// DialTimeout bounds connecting to a remote.
	DialTimeout time.Duration
	// BackoffMin and BackoffMax bound the reconnect delay.
	BackoffMin, BackoffMax time.Duration
	// HeartbeatStaleAfter makes a remote not ready when its heartbeat is older.
	HeartbeatStaleAfter time.Duration
}

// DefaultTiming is what the agent runs with.
var DefaultTiming = Timing{
	ScanInterval:        500 * time.Millisecond,
	ProbeInterval:       5 * time.Second,
	ProbeTimeout:        5 * time.Second,
	DialTimeout:         5 * time.Second,
	BackoffMin:          time.Second,
	BackoffMax:          time.Minute,
	HeartbeatStaleAfter: meshapi.HeartbeatStaleAfter,
}

func (t Timing) withDefaults() Timing {
	d := DefaultTiming
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.ScanInterval, &d.ScanInterval}, {&t.ProbeInterval, &d.ProbeInterval},
		{&t.ProbeTimeout, &d.ProbeTimeout}, {&t.DialTimeout, &d.DialTimeout},
		{&t.BackoffMin, &d.BackoffMin}, {&t.BackoffMax, &d.BackoffMax},
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
	// Desired receives every remote cluster's entries (a *datapath.Desired).
	Desired DesiredSet
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
		opts:     opts,
		log:      opts.Log,
		registry: NewRegistry(opts.LocalCluster, opts.LocalClusterID, opts.LocalPodCIDRs),
		remotes:  make(map[string]*remote),
		synced:   make(chan struct{}),
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
		r.stop()
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
			r.start(ctx, f)
		case r.fileHash() != f.Hash:
			r.log.Info("Remote cluster file changed; reconnecting with the new settings")
			r.start(ctx, f)
		}
	}
	m.scanned = true
	m.maybeAllowPruneLocked()
}

// removeLocked withdraws every entry of a remote whose file is gone.
func (m *Mesh) removeLocked(r *remote) {
	delete(m.remotes, r.name)
	r.stop()
	m.opts.Desired.RemoveCluster(r.name)
	m.registry.Release(r.name)
	r.log.Info("Remote cluster file removed; withdrew its entries")
}

// push replaces a remote's entries and declared pod CIDRs (from its
// admitted cluster-config) if gen is still its current generation.
func (m *Mesh) push(r *remote, gen uint64, podCIDRs []netip.Prefix, entries []datapath.Entry) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.remotes[r.name] != r || r.generation() != gen {
		return false
	}
	m.opts.Desired.SetCluster(r.name, podCIDRs, entries)
	return true
}

// errSuperseded ends a session whose generation is no longer current.
var errSuperseded = errors.New("superseded by a newer version of the file, or removed")

// admit asks the registry to admit cc for r if gen is still current; a
// refusal withdraws r's entries. Holding m.mu orders it with removals, so a
// winding-down generation can never claim for a cluster that is gone.
func (m *Mesh) admit(r *remote, gen uint64, cc *meshapi.ClusterConfig) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.remotes[r.name] != r || r.generation() != gen {
		return errSuperseded
	}
	if err := m.registry.Admit(cc); err != nil {
		m.withdrawLocked(r, gen)
		return fmt.Errorf("%w: %w", errRefused, err)
	}
	return nil
}

// refuse releases r's claim and withdraws its entries if gen is current.
func (m *Mesh) refuse(r *remote, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.remotes[r.name] != r || r.generation() != gen {
		return
	}
	m.registry.Release(r.name)
	m.withdrawLocked(r, gen)
}

func (m *Mesh) withdrawLocked(r *remote, gen uint64) {
	m.opts.Desired.RemoveCluster(r.name)
	r.update(gen, func() { r.nodes, r.endpoints, r.prefixes = 0, 0, 0 })
}

func (m *Mesh) remoteSynced(r *remote, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r.update(gen, func() { r.everSynced = true })
	m.maybeAllowPruneLocked()
}

func (m *Mesh) maybeAllowPruneLocked() {
	if m.pruneAllowed || !m.scanned {
		return
	}
	for _, r := range m.remotes {
		r.mu.Lock()
		synced := r.everSynced
		r.mu.Unlock()
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

func (r *remote) fileHash() [32]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hash
}
