package importer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Timing tunes how fast the importer notices and retries: the agents'
// session timing (clustermesh.Timing; ScanInterval also bounds how long a
// removed file's cluster stays imported, HeartbeatStaleAfter is unused) and
// the writer's resync. Zero fields take DefaultTiming's.
type Timing struct {
	clustermesh.Timing
	// Resync re-reconciles every import this often (a missed event is
	// then harmless).
	Resync time.Duration
}

// DefaultTiming is what clustermesh-apiserver runs with.
var DefaultTiming = Timing{
	Timing: clustermesh.Timing{
		ScanInterval:  250 * time.Millisecond,
		ProbeInterval: 5 * time.Second,
		ProbeTimeout:  5 * time.Second,
		DialTimeout:   5 * time.Second,
		BackoffMin:    time.Second,
		BackoffMax:    time.Minute,
	},
	Resync: 10 * time.Minute,
}

func (t Timing) withDefaults() Timing {
	d := DefaultTiming
	t.ScanInterval = cmp.Or(t.ScanInterval, d.ScanInterval)
	t.ProbeInterval = cmp.Or(t.ProbeInterval, d.ProbeInterval)
	t.ProbeTimeout = cmp.Or(t.ProbeTimeout, d.ProbeTimeout)
	t.DialTimeout = cmp.Or(t.DialTimeout, d.DialTimeout)
	t.BackoffMin = cmp.Or(t.BackoffMin, d.BackoffMin)
	t.BackoffMax = cmp.Or(t.BackoffMax, d.BackoffMax)
	t.Resync = cmp.Or(t.Resync, d.Resync)
	return t
}

// LeaderElection configures the Lease that makes one importer of a cluster
// the writer. Without it (nil) the importer writes as soon as it runs.
type LeaderElection struct {
	// Namespace and Name of the Lease.
	Namespace, Name string
	// Identity of this instance (pod name); unique among the candidates.
	Identity string
	// LeaseDuration, RenewDeadline, RetryPeriod as in client-go's
	// leaderelection; zero takes 15s, 10s, 2s.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Options configure an Importer.
type Options struct {
	LocalCluster   string
	LocalClusterID uint32
	LocalPodCIDRs  []netip.Prefix
	// ConfigDir holds one etcd-client YAML file per remote cluster, in the
	// agents' format.
	ConfigDir string
	// Feed and Cache, when set, read the remotes from the cache tier
	// (package cache) instead of connections of the importer's own: their
	// services arrive through Feed from the cache's sessions, already
	// admitted there, and Cache reports how fresh each remote is.
	// ConfigDir then only says which remotes are configured (a removed
	// file withdraws its cluster at the next scan, as without the cache).
	Feed  *Feed
	Cache CacheStatus
	// Local reads the local cluster's own published entries (the embedded
	// etcd's read-only client), so the local export is merged like any
	// other; nil imports only the remotes.
	Local kvstore.KV
	// Kube and MCS write into the local cluster.
	Kube kubernetes.Interface
	MCS  mcsclient.Interface
	// LeaderElection, when set, lets only the Lease holder write.
	LeaderElection *LeaderElection
	// Workers reconcile imports in parallel; default 4.
	Workers int
	Timing  Timing
	Metrics *Metrics
	Log     logrus.FieldLogger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Importer is the import half of the Multi-Cluster Services API. Create
// with New, start with Run.
type Importer struct {
	opts     Options
	log      logrus.FieldLogger
	m        *Metrics
	registry *clustermesh.Registry
	nextGen  uint64

	// mu protects everything below.
	mu       sync.Mutex
	clusters map[string]*clusterView
	sources  map[string]*source
	dirErr   string
	leader   bool
	// kick wakes the writer for the given keys and ownedKeys lists the keys
	// of a cluster's slices in Kubernetes; both nil while not writing.
	kick      func(keys ...Key)
	ownedKeys func(cluster string) []Key
}

// clusterView is what the importer holds of one cluster.
type clusterView struct {
	name  string
	local bool
	gen   uint64
	// synced: entries is authoritative (a listing completed, or the cluster
	// was refused / publishes format 1 and so exports nothing). Until then
	// the importer keeps the cluster's existing slices untouched.
	synced  bool
	entries map[Key]*entry
	cfg     *meshapi.ClusterConfig
	// Status.
	connected   bool
	phase       string
	note        string
	since       time.Time
	lastContact time.Time
	lastErr     string
	lastErrTime time.Time
	failures    uint64
	invalid     map[string]uint64
	lastInvalid string
}

// New checks opts and returns an Importer.
func New(opts Options) (*Importer, error) {
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
	if opts.Kube == nil || opts.MCS == nil {
		errs = append(errs, errors.New("no Kubernetes clients"))
	}
	if (opts.Feed == nil) != (opts.Cache == nil) {
		errs = append(errs, errors.New("reading the remotes from the cache needs both its feed and its status"))
	}
	if le := opts.LeaderElection; le != nil && (le.Namespace == "" || le.Name == "" || le.Identity == "") {
		errs = append(errs, errors.New("leader election needs a Lease namespace, name and identity"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("importer options: %w", err)
	}
	if opts.Log == nil {
		opts.Log = logrus.New()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	opts.Timing = opts.Timing.withDefaults()
	imp := &Importer{
		opts:     opts,
		log:      opts.Log.WithField("component", "importer"),
		m:        opts.Metrics,
		registry: clustermesh.NewRegistry(opts.LocalCluster, opts.LocalClusterID, opts.LocalPodCIDRs),
		clusters: make(map[string]*clusterView),
		sources:  make(map[string]*source),
	}
	imp.m.importer = imp
	return imp, nil
}

func (imp *Importer) now() time.Time { return imp.opts.Now() }

// Run reads the clusters and, while it holds the Lease (or always without
// leader election), writes the imports, until ctx is done. Reading goes on
// while another instance leads, so a new leader starts warm.
func (imp *Importer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if imp.opts.Local != nil {
		imp.mu.Lock()
		imp.startSourceLocked(ctx, imp.opts.LocalCluster, true, [32]byte{}, func() (kvstore.KV, func(), error) {
			return imp.opts.Local, func() {}, nil
		})
		imp.mu.Unlock()
	}
	// The first scan completes before anything is written, so that a
	// configured cluster is never mistaken for a removed one.
	imp.scanDir(ctx)
	wg.Go(func() { every(ctx, imp.opts.Timing.ScanInterval, func() { imp.scanDir(ctx) }) })
	if imp.opts.Feed != nil {
		wg.Go(func() { imp.followFeed(ctx) })
	}
	defer imp.stopSources()

	if imp.opts.LeaderElection == nil {
		imp.setLeader(true)
		return imp.write(ctx)
	}
	return imp.runElected(ctx)
}

// scanDir makes the running remote sources match the config directory.
func (imp *Importer) scanDir(ctx context.Context) {
	files, err := clustermesh.ScanDir(imp.opts.ConfigDir, imp.opts.LocalCluster)
	imp.mu.Lock()
	defer imp.mu.Unlock()
	if err != nil {
		// Keep everything: an unreadable directory is not a removal.
		if imp.dirErr != err.Error() {
			imp.log.WithError(err).Warn("Cannot read the clustermesh config directory; keeping the imports as they are")
		}
		imp.dirErr = err.Error()
		return
	}
	imp.dirErr = ""
	for name, s := range imp.sources {
		if _, ok := files[name]; !ok {
			imp.removeLocked(s)
		}
	}
	for name, f := range files {
		s, ok := imp.sources[name]
		if imp.opts.Feed != nil {
			// The cache reads the file (and reconnects when it changes).
			if !ok {
				imp.startFedSourceLocked(name, f.Hash)
			}
			continue
		}
		if ok && s.hash == f.Hash {
			continue
		}
		if ok {
			s.log.Info("Remote cluster file changed; reconnecting with the new settings")
			s.cancel()
		}
		if f.Err != nil {
			imp.viewLocked(name, false).phase = "config error: " + f.Err.Error()
			imp.sources[name] = &source{name: name, hash: f.Hash, cancel: func() {}, done: closedChan()}
			continue
		}
		cfg := f.Config
		imp.startSourceLocked(ctx, name, false, f.Hash, func() (kvstore.KV, func(), error) {
			cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{DialTimeout: imp.opts.Timing.DialTimeout, KeepAlive: imp.opts.Timing.ProbeInterval})
			if err != nil {
				return nil, nil, err
			}
			return cli, func() { cli.Close() }, nil
		})
	}
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func (imp *Importer) startSourceLocked(ctx context.Context, name string, local bool, hash [32]byte, dial func() (kvstore.KV, func(), error)) {
	imp.nextGen++
	sctx, cancel := context.WithCancel(ctx)
	s := &source{imp: imp, name: name, local: local, gen: imp.nextGen, hash: hash, dial: dial, cancel: cancel, done: make(chan struct{}),
		log: imp.log.WithField("cluster", name)}
	v := imp.viewLocked(name, local)
	v.gen = s.gen
	v.phase = "connecting"
	if !local {
		imp.sources[name] = s
		if len(v.entries) == 0 && !v.synced {
			s.log.Info("Remote cluster configured for service import")
		}
	}
	go s.run(sctx)
}

func (imp *Importer) viewLocked(name string, local bool) *clusterView {
	v, ok := imp.clusters[name]
	if !ok {
		v = &clusterView{name: name, local: local, since: imp.now(), invalid: map[string]uint64{}}
		imp.clusters[name] = v
	}
	return v
}

// removeLocked withdraws a remote whose file is gone: its imports go with
// the next reconcile of each of its keys, which is kicked now.
func (imp *Importer) removeLocked(s *source) {
	s.cancel()
	delete(imp.sources, s.name)
	imp.registry.Release(s.name)
	v := imp.clusters[s.name]
	delete(imp.clusters, s.name)
	imp.m.forget(s.name)
	s.log.Info("Remote cluster file removed; withdrawing its imports")
	if imp.kick == nil {
		return
	}
	var keys []Key
	if v != nil {
		for k := range v.entries {
			keys = append(keys, k)
		}
	}
	// Slices of the cluster written by an earlier run are found by the
	// writer's index; kick them too.
	keys = append(keys, imp.ownedKeysOfClusterLocked(s.name)...)
	imp.kick(keys...)
}

// ownedKeysOfClusterLocked is set by the writer while it runs.
func (imp *Importer) ownedKeysOfClusterLocked(cluster string) []Key {
	if imp.ownedKeys == nil {
		return nil
	}
	return imp.ownedKeys(cluster)
}

func (imp *Importer) stopSources() {
	imp.mu.Lock()
	var done []chan struct{}
	for _, s := range imp.sources {
		s.cancel()
		done = append(done, s.done)
	}
	imp.mu.Unlock()
	for _, d := range done {
		<-d
	}
}

// current returns the view of name if gen is its current generation.
func (imp *Importer) currentLocked(name string, gen uint64) *clusterView {
	v := imp.clusters[name]
	if v == nil || v.gen != gen {
		return nil
	}
	return v
}

// publish replaces a cluster's entries with a complete state and kicks the
// writer for every key that changed.
func (imp *Importer) publish(name string, gen uint64, entries map[Key]*entry, cc *meshapi.ClusterConfig, note string) {
	imp.mu.Lock()
	defer imp.mu.Unlock()
	v := imp.currentLocked(name, gen)
	if v == nil {
		return
	}
	changed := diffKeys(v.entries, entries)
	if !v.synced {
		changed = append(changed, imp.ownedKeysOfClusterLocked(name)...)
	}
	v.entries, v.synced, v.cfg, v.note = entries, true, cc, note
	v.connected, v.phase, v.lastContact = true, "", imp.now()
	if imp.kick != nil && len(changed) > 0 {
		imp.kick(changed...)
	}
}

// diffKeys lists the keys whose entry differs between a and b.
func diffKeys(a, b map[Key]*entry) []Key {
	var out []Key
	for k, ea := range a {
		if eb, ok := b[k]; !ok || eb != ea {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}

// refuse withdraws a cluster whose own config was refused.
func (imp *Importer) refuse(name string, gen uint64, err error) {
	imp.log.WithError(err).WithField("cluster", name).Warn("Refusing cluster; withdrawing its imports")
	imp.publish(name, gen, nil, nil, err.Error())
	imp.mu.Lock()
	defer imp.mu.Unlock()
	if v := imp.currentLocked(name, gen); v != nil {
		v.connected = false
		imp.registry.Release(name)
	}
}

func (imp *Importer) connected(name string, gen uint64, cc *meshapi.ClusterConfig) {
	imp.mu.Lock()
	defer imp.mu.Unlock()
	if v := imp.currentLocked(name, gen); v != nil {
		v.connected, v.lastContact, v.phase = true, imp.now(), "listing exported services"
		if v.synced {
			v.phase = ""
		}
	}
}

func (imp *Importer) contact(name string, gen uint64) {
	imp.mu.Lock()
	defer imp.mu.Unlock()
	if v := imp.currentLocked(name, gen); v != nil && v.synced {
		v.lastContact = imp.now()
	}
}

func (imp *Importer) setPhase(name string, gen uint64, phase string) {
	imp.mu.Lock()
	defer imp.mu.Unlock()
	if v := imp.currentLocked(name, gen); v != nil {
		v.phase = phase
	}
}

func (imp *Importer) sessionEnded(name string, gen uint64, err error) {
	imp.mu.Lock()
	defer imp.mu.Unlock()
	v := imp.currentLocked(name, gen)
	if v == nil {
		return
	}
	v.connected = false
	v.phase = err.Error()
	if !errors.Is(err, errConfigChanged) {
		v.lastErr, v.lastErrTime = err.Error(), imp.now()
		v.failures++
		imp.m.failures.WithLabelValues(name).Inc()
	}
}

func (imp *Importer) countInvalid(name, reason, key string, err error) {
	imp.log.WithError(err).WithFields(logrus.Fields{"cluster": name, "key": key, "reason": reason}).Warn("Refusing invalid remote service data")
	imp.m.invalid.WithLabelValues(name, reason).Inc()
	imp.mu.Lock()
	defer imp.mu.Unlock()
	if v := imp.clusters[name]; v != nil {
		v.invalid[reason]++
		v.lastInvalid = key + ": " + err.Error()
	}
}

func (imp *Importer) setLeader(b bool) {
	imp.mu.Lock()
	imp.leader = b
	imp.mu.Unlock()
	if b {
		imp.m.leader.Set(1)
	} else {
		imp.m.leader.Set(0)
	}
}

// clusterState is how the writer sees one cluster for one key.
type clusterState int

const (
	// stateAbsent: not configured (file removed) or never heard of:
	// its slices go.
	stateAbsent clusterState = iota
	// statePending: configured, not listed since this process started:
	// its slices stay as they are.
	statePending
	// stateSynced: its entries are authoritative.
	stateSynced
)

// snapshot returns, for key k, the exports of the synced clusters and the
// state of every cluster the importer knows.
func (imp *Importer) snapshot(k Key) (exports []*Export, states map[string]clusterState) {
	imp.mu.Lock()
	defer imp.mu.Unlock()
	states = make(map[string]clusterState, len(imp.clusters))
	for name, v := range imp.clusters {
		if !v.synced {
			states[name] = statePending
			continue
		}
		states[name] = stateSynced
		if e := v.entries[k]; e != nil && e.export != nil {
			exports = append(exports, e.export)
		}
	}
	return exports, states
}

// allKeys lists every key some cluster exports.
func (imp *Importer) allKeys() []Key {
	imp.mu.Lock()
	defer imp.mu.Unlock()
	seen := map[Key]bool{}
	var out []Key
	for _, v := range imp.clusters {
		for k := range v.entries {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// every calls f every d until ctx is done.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
