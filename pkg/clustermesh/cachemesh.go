package clustermesh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podmesh/podmesh/pkg/agentstatus"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// CachePageSize is how many keys of the cache one listing request reads.
// Each request costs the replica a walk of etcd's index over the rest of the
// prefix and a pass through the proxy, so fewer pages cost less CPU; each
// page is also held in flight (by etcd, the proxy and TLS) while a thousand
// agents restarting at once list together, so more keys per page cost more
// memory. Shards are compressed (a few KiB for a few hundred nodes, at most
// 1 MiB), so 64 keys are tens to hundreds of KiB. Measured at Cilium's CI
// shape, 1,000 agents against one replica (docs/scale.md, one run each on a
// loaded machine): pages of 16, 32, 64, 128 and 256 keys cost the replica
// 30, 19, 14, 15 and 11 s of CPU and peaked its RSS at 0.7, 0.85, 1.2, 1.8
// and 1.6 GiB (64 keys: 1.1-2.0 GiB over eight runs).
const CachePageSize = 64

// errReplicaChanged ends a cache session whose connection landed on another
// replica (another etcd, whose revisions mean nothing to this listing).
var errReplicaChanged = errors.New("cache replica changed")

// errCacheFileChanged ends a session whose client file changed; the next
// session starts at once (every other end of an established session waits
// a random part of the reconnect window).
var errCacheFileChanged = fmt.Errorf("%w: the cache's client file", errConfigChanged)

// CacheMesh is the agent's view of the remote clusters in cache mode: one
// connection to its own cluster's clustermesh-apiserver cache (the
// etcd-client file Options.CacheFile names), one list+watch of the cache
// prefix, and the same validation, conflict registry and entry computation
// as direct mode (Mesh). See doc.go.
type CacheMesh struct {
	opts     Options
	log      logrus.FieldLogger
	registry *Registry
	synced   chan struct{}
	wg       sync.WaitGroup

	// mu protects everything below.
	mu sync.Mutex
	// pushed holds the clusters whose entries are in the desired set, and
	// what status reports of them.
	pushed map[string]*cacheRemote
	// unserved holds the clusters the cache lists with a status but serves
	// no entries of (not synced there yet, or refused there): status
	// reports them, not ready, with the cache's reason.
	unserved     map[string]meshapi.CacheStatus
	connected    bool
	connReason   string
	connSince    time.Time
	lastErr      string
	lastErrTime  time.Time
	failures     uint64
	pruneAllowed bool
	pruneReason  string
	// sess is what status says of the session to the cache.
	sess agentstatus.Cache
}

// cacheRemote is one remote cluster as the cache serves it, as last
// published to the desired set.
type cacheRemote struct {
	status             meshapi.CacheStatus
	clusterID          uint32
	nodes, endpoints   int
	prefixes           int
	noNode, duplicates int
	invalidNow         map[string]int
	refused            *ConflictError
	lastInvalid        string
	invalidTotal       map[string]uint64
}

// NewCache checks opts (CacheFile instead of ConfigDir) and returns a
// CacheMesh; Run starts it.
func NewCache(opts Options) (*CacheMesh, error) {
	if opts.CacheFile == "" {
		return nil, errors.New("clustermesh options: no cache file")
	}
	if opts.ConfigDir == "" {
		opts.ConfigDir = filepath.Dir(opts.CacheFile) // satisfies New's check; unused
	}
	m, err := New(opts)
	if err != nil {
		return nil, err
	}
	return &CacheMesh{
		opts:       m.opts,
		log:        m.log.WithField("cache", opts.CacheFile),
		registry:   m.registry,
		synced:     make(chan struct{}),
		pushed:     make(map[string]*cacheRemote),
		unserved:   make(map[string]meshapi.CacheStatus),
		connReason: "connecting",
		connSince:  m.now(),
	}, nil
}

// Synced is closed once pruning is allowed: the first complete listing of
// a synced cache was applied, or the sync timeout passed.
func (c *CacheMesh) Synced() <-chan struct{} { return c.synced }

// Collector returns the mesh's metrics (the same as direct mode's).
func (c *CacheMesh) Collector() prometheus.Collector { return newCollector(c.Status) }

// Run keeps one session to the cache until ctx is done, reconnecting with
// a jittered backoff; the desired set keeps its entries when it returns.
func (c *CacheMesh) Run(ctx context.Context) error {
	if c.opts.SyncTimeout > 0 {
		c.wg.Go(func() {
			if sleepCtx(ctx, c.opts.SyncTimeout) {
				c.allowPrune(fmt.Sprintf("sync timeout %s passed", c.opts.SyncTimeout))
			}
		})
	}
	defer c.wg.Wait()
	t := c.opts.Timing
	bo := kvstore.NewBackoff(t.BackoffMin, t.BackoffMax)
	for {
		cfg, err := kvstore.LoadConfig(c.opts.CacheFile, c.log)
		established := false
		if err == nil {
			established, err = c.session(ctx, cfg)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var delay time.Duration
		switch {
		case errors.Is(err, errCacheFileChanged):
			delay = 0
		case established:
			// The replica is gone (or answers no more, or is another
			// one): every agent it served notices at about the same
			// moment. A uniformly random wait over the window (full
			// jitter) spreads their listings of the surviving replicas
			// over it, without any agent knowing of the others; the
			// backoff starts over after it.
			bo = kvstore.NewBackoff(t.BackoffMin, t.BackoffMax)
			delay = rand.N(t.ReconnectWindow)
		default:
			delay = bo.Step()
		}
		c.disconnected(err, !errors.Is(err, errCacheFileChanged), delay)
		c.log.WithError(err).WithField("retry_in", delay.Round(time.Millisecond).String()).Warn("Cache session ended; keeping every remote's last known state")
		if !sleepCtx(ctx, delay) {
			return ctx.Err()
		}
	}
}

// session connects to one endpoint of cfg (chosen at random, so agents
// spread over the replicas a file names), lists the cache prefix, then
// watches it, publishing after every batch once the listing is complete and
// the cache is synced. It reports whether it published.
//
// The etcd client reconnects on its own and resumes the watch from the
// last revision it delivered, which is right only on the replica that
// revision belongs to. So no event is applied that may have come over a
// new connection before that connection was shown to reach the listed
// replica (its epoch read over it, checkConn): the same replica resumes
// without a re-list, another one ends the session.
func (c *CacheMesh) session(parent context.Context, cfg *kvstore.Config) (bool, error) {
	t := c.opts.Timing
	one := *cfg
	one.Endpoints = []string{cfg.Endpoints[rand.IntN(len(cfg.Endpoints))]}
	conns := &connCounter{dial: c.opts.Dial}
	cli, err := kvstore.NewClient(&one, kvstore.ClientOptions{DialTimeout: t.DialTimeout, KeepAlive: t.KeepAlive, KeepAliveTimeout: t.RequestTimeout, Dial: conns.Dial})
	if err != nil {
		return false, err
	}
	defer cli.Close()
	c.sessionStarted(one.Endpoints[0])
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()

	events := make(chan kvstore.Event, 1024)
	lw := &kvstore.ListWatcher{Client: cli, Prefix: meshapi.CacheRoot, PageSize: CachePageSize, Backoff: kvstore.Backoff{Min: t.BackoffMin, Max: t.BackoffMax}, Log: c.log}
	wg.Go(func() {
		_ = lw.Run(ctx, func(ev kvstore.Event) {
			select {
			case events <- ev:
			case <-ctx.Done():
			}
		})
	})
	v := newCacheView()
	wg.Go(func() { c.probe(ctx, cancel, cli, v.epochRead) })
	wg.Go(func() { c.watchFile(ctx, cancel, cfg.Hash) })

	published, complete := false, false
	var verified uint64 // the connection whose replica is the listed one
	apply := func(ev kvstore.Event) error {
		if err := c.checkConn(ctx, cli, conns, v, &verified); err != nil {
			return err
		}
		if ev.Kind == kvstore.Listed {
			c.listed()
		}
		return v.apply(ev)
	}
	for {
		select {
		case <-ctx.Done():
			return published, sessionErr(ctx, nil)
		case ev := <-events:
			if err := apply(ev); err != nil {
				cancel(err)
				continue
			}
		drain:
			for range cap(events) {
				select {
				case ev := <-events:
					if err := apply(ev); err != nil {
						cancel(err)
						break drain
					}
				default:
					break drain
				}
			}
		}
		if ctx.Err() != nil || !v.listed {
			continue
		}
		// Clusters are pushed as soon as the listing is in; what the
		// listing lacks is withdrawn only once the cache says it is
		// complete (its canary), so a replica still filling up never
		// makes an agent withdraw.
		withdrawAbsent := v.cacheSynced && !complete
		c.publish(v, !published, withdrawAbsent)
		if !published {
			published = true
			c.reachable()
			c.servedBy(v.epochRead(), conns.address())
		}
		if withdrawAbsent {
			complete = true
			c.log.WithField("remotes", len(v.clusters)).Info("Cache listed and synced; remote clusters served from the cache")
			c.allowPrune("the cache's complete listing is applied")
		}
	}
}

// watchFile ends the session when the cache's client file changes
// (certificate rotation), so the next session uses the new settings.
func (c *CacheMesh) watchFile(ctx context.Context, cancel context.CancelCauseFunc, hash [32]byte) {
	watchDir(ctx, filepath.Dir(c.opts.CacheFile), c.opts.Timing.ScanInterval, c.log, func() {
		cfg, err := kvstore.LoadConfig(c.opts.CacheFile, nil)
		if err == nil && cfg.Hash != hash {
			cancel(errCacheFileChanged)
		}
	})
}

// connCounter opens a session's connections (with the mesh's dialer, or a
// plain TCP dial) and counts them: a connection opened after the one whose
// replica was checked may reach another replica.
type connCounter struct {
	dial func(ctx context.Context, addr string) (net.Conn, error)

	mu     sync.Mutex // protects n and peer
	n      uint64
	dialed string
	peer   string
}

func (cc *connCounter) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var conn net.Conn
	var err error
	if cc.dial != nil {
		conn, err = cc.dial(ctx, addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.n++
	cc.dialed, cc.peer = addr, conn.RemoteAddr().String()
	return conn, nil
}

func (cc *connCounter) count() uint64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.n
}

// address says where the last connection went: the address dialled and,
// when it differs, the peer the connection reached.
func (cc *connCounter) address() string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.peer == "" || cc.peer == cc.dialed {
		return cc.dialed
	}
	return cc.dialed + " -> " + cc.peer
}

// checkConn returns nil when every event received so far came over
// connections known to reach the listed replica. After a reconnect it reads
// the epoch over the new connection: the same epoch means the etcd client's
// resumed watch continues the listed history (no re-list); another epoch,
// or more than one new connection since the last check (one of them may
// have delivered another replica's events), ends the session. Before the
// listing has read the epoch, only the session's first connection counts.
func (c *CacheMesh) checkConn(ctx context.Context, cli *clientv3.Client, conns *connCounter, v *cacheView, verified *uint64) error {
	for {
		n := conns.count()
		if n == *verified {
			return nil
		}
		listed := v.epochRead()
		switch {
		case *verified == 0 && n == 1 && listed == "":
			*verified = n // the first connection: the listing learns its epoch
			return nil
		case n > *verified+1 || listed == "":
			return fmt.Errorf("%w: reconnected %d times since the listed replica was last confirmed", errReplicaChanged, n-*verified)
		}
		rctx, cancel := context.WithTimeout(ctx, c.opts.Timing.ProbeTimeout)
		resp, err := cli.Get(rctx, meshapi.CacheEpochKey)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			// The probe ends the session if nothing answers for long.
			if !sleepCtx(ctx, c.opts.Timing.ProbeInterval) {
				return ctx.Err()
			}
			continue
		case conns.count() != n:
			continue // reconnected again meanwhile: check the newest
		}
		epoch := ""
		if len(resp.Kvs) > 0 {
			epoch = string(resp.Kvs[0].Value)
		}
		if epoch != listed {
			return fmt.Errorf("%w: reconnected to epoch %q, listed %q", errReplicaChanged, epoch, listed)
		}
		*verified = n
		c.log.WithField("epoch", epoch).Info("Reconnected to the same cache replica; watch resumed from its revision")
	}
}

// probe reads the cache's epoch every ProbeInterval: an unanswered read
// makes every remote not ready (their entries stay); silence for
// RequestTimeout, or another epoch than the listing's (the connection
// landed on another replica), ends the session.
func (c *CacheMesh) probe(ctx context.Context, cancel context.CancelCauseFunc, cli *clientv3.Client, listed func() string) {
	t := c.opts.Timing
	ticker := time.NewTicker(t.ProbeInterval)
	defer ticker.Stop()
	lastOK := time.Now()
	for {
		rctx, rcancel := context.WithTimeout(ctx, t.ProbeTimeout)
		resp, err := cli.Get(rctx, meshapi.CacheEpochKey)
		rcancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil:
			c.unreachable(fmt.Errorf("cache unreachable: no answer to the liveness read within %s: %w", t.ProbeTimeout, err))
			if time.Since(lastOK) >= t.RequestTimeout {
				cancel(fmt.Errorf("cache unreachable: nothing heard for %s: %w", t.RequestTimeout, err))
				return
			}
		default:
			lastOK = time.Now()
			epoch := ""
			if len(resp.Kvs) > 0 {
				epoch = string(resp.Kvs[0].Value)
			}
			if l := listed(); l != "" && epoch != l {
				cancel(fmt.Errorf("%w: epoch %q, listed %q", errReplicaChanged, epoch, l))
				return
			}
			c.reachable()
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// publish pushes the clusters of v that changed (all of them on a session's
// first publish); withdrawAbsent also withdraws what was pushed before and
// the cache no longer holds.
func (c *CacheMesh) publish(v *cacheView, all, withdrawAbsent bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if withdrawAbsent {
		for name := range c.pushed {
			if cl := v.clusters[name]; cl == nil || cl.cfg == nil {
				c.withdrawLocked(name, "not in the cache")
			}
		}
	}
	dirty := v.dirty
	if all {
		dirty = make(map[string]bool, len(v.clusters))
		for name := range v.clusters {
			dirty[name] = true
		}
	}
	v.dirty = make(map[string]bool)
	for name := range dirty {
		cl := v.clusters[name]
		switch {
		case cl == nil:
			c.withdrawLocked(name, "removed from the cache")
			continue
		case cl.cfg == nil:
			// A config that was deleted or is invalid withdraws at once;
			// one the listing simply lacks (the cache has only a status:
			// not synced or refused there) only once the cache says its
			// listing is complete, like a cluster absent altogether.
			if cl.rawCfg != nil || v.deleted[name] || v.cacheSynced {
				c.withdrawLocked(name, "removed from the cache")
			}
			continue
		case cl.status == nil || !cl.status.Synced:
			continue // the cache is still filling it: keep what we have
		}
		if err := c.registry.Admit(cl.cfg); err != nil {
			var ce *ConflictError
			errors.As(err, &ce)
			c.opts.Desired.RemoveCluster(name)
			r := c.remoteLocked(name)
			r.refused, r.nodes, r.endpoints, r.prefixes = ce, 0, 0, 0
			continue
		}
		entries, st := ComputeEntries(name, cl.cfg.ID, c.opts.LocalTunnelIP, cl.state.nodes, cl.state.endpoints)
		c.opts.Desired.SetCluster(name, cl.cfg.PodCIDRs, entries)
		r := c.remoteLocked(name)
		r.status, r.clusterID, r.refused = *cl.status, cl.cfg.ID, nil
		r.nodes, r.endpoints, r.prefixes = len(cl.state.nodes), len(cl.state.endpoints), len(entries)
		r.noNode, r.duplicates = st.EndpointsWithoutNode, st.DuplicatePrefixes
		r.invalidNow = cl.state.invalidByReason()
		r.invalidTotal, r.lastInvalid = cl.invalidTotal, cl.lastInvalid
	}
	// Status changes of clusters whose entries did not change, and the
	// clusters the cache lists without serving their entries.
	for name, cl := range v.clusters {
		r := c.pushed[name]
		switch {
		case r != nil && cl.status != nil:
			r.status = *cl.status
			delete(c.unserved, name)
		case r == nil && cl.status != nil:
			c.unserved[name] = *cl.status
		default:
			delete(c.unserved, name)
		}
	}
	for name := range c.unserved {
		if v.clusters[name] == nil {
			delete(c.unserved, name)
		}
	}
}

func (c *CacheMesh) remoteLocked(name string) *cacheRemote {
	r := c.pushed[name]
	if r == nil {
		r = &cacheRemote{}
		c.pushed[name] = r
	}
	return r
}

func (c *CacheMesh) withdrawLocked(name, why string) {
	if _, ok := c.pushed[name]; !ok {
		return
	}
	delete(c.pushed, name)
	c.registry.Release(name)
	c.opts.Desired.RemoveCluster(name)
	c.log.WithFields(logrus.Fields{"cluster": name, "reason": why}).Info("Remote cluster withdrawn")
}

func (c *CacheMesh) reachable() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.connected {
		c.connected, c.connReason, c.connSince = true, "", c.opts.Now()
	}
}

func (c *CacheMesh) unreachable(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.connected {
		c.connected, c.connSince = false, c.opts.Now()
		c.recordErrorLocked(err)
		c.log.WithError(err).Warn("Cache not answering; keeping every remote's state")
	}
	c.connReason = err.Error()
}

func (c *CacheMesh) disconnected(err error, failure bool, retryIn time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.connected {
		c.connSince = c.opts.Now()
	}
	c.connected, c.connReason = false, err.Error()
	c.sess.RetryAt = c.opts.Now().Add(retryIn)
	if failure {
		c.recordErrorLocked(err)
	}
}

func (c *CacheMesh) sessionStarted(endpoint string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sess.Endpoint, c.sess.Address = endpoint, ""
	c.sess.SessionStart, c.sess.RetryAt = c.opts.Now(), time.Time{}
}

func (c *CacheMesh) listed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sess.Listings++
	c.sess.LastListed = c.opts.Now()
}

func (c *CacheMesh) servedBy(epoch, address string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sess.Epoch, c.sess.Address = epoch, address
}

func (c *CacheMesh) recordErrorLocked(err error) {
	c.lastErr, c.lastErrTime = err.Error(), c.opts.Now()
	c.failures++
}

func (c *CacheMesh) allowPrune(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pruneAllowed {
		return
	}
	c.pruneAllowed, c.pruneReason = true, reason
	c.opts.Desired.AllowPrune()
	close(c.synced)
	c.log.WithField("reason", reason).Info("Initial sync complete; the datapath may prune stale entries")
}

// Status reports every remote cluster the cache serves: ready when the
// cache answers and its session to the remote is live; otherwise why, and
// since when the data is the last known state.
func (c *CacheMesh) Status() Status {
	var programmed map[string]int
	if c.opts.Programmed != nil {
		programmed = c.opts.Programmed()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{
		LocalCluster:   c.opts.LocalCluster,
		LocalClusterID: c.opts.LocalClusterID,
		ConfigDir:      "cache: " + c.opts.CacheFile,
		Synced:         c.pruneAllowed,
		SyncReason:     c.pruneReason,
	}
	sess := c.sess
	sess.Connected = c.connected
	st.Cache = &sess
	for name, r := range c.pushed {
		rs := RemoteStatus{
			Cluster: name, ClusterID: r.clusterID, Synced: r.status.Synced,
			Ready: c.connected && r.status.Ready && r.refused == nil, Since: r.status.Since,
			LastHeartbeat: r.status.LastHeartbeat,
			Nodes:         r.nodes, Endpoints: r.endpoints, Prefixes: r.prefixes,
			EndpointsWithoutNode: r.noNode, DuplicatePrefixes: r.duplicates,
			InvalidByReason: r.invalidNow, InvalidTotal: r.invalidTotal, LastInvalid: r.lastInvalid,
			LastError: c.lastErr, LastErrorTime: c.lastErrTime, Failures: c.failures,
		}
		switch {
		case r.refused != nil:
			rs.Reason = r.refused.Error()
			rs.Conflict = &r.refused.Conflict
		case !c.connected:
			rs.Reason = "cache not answering, state as last served: " + c.connReason
			if c.connSince.After(rs.Since) {
				rs.Since = c.connSince
			}
		case !r.status.Ready:
			rs.Reason = "stale in the cache: " + r.status.Reason
		}
		for _, n := range r.invalidNow {
			rs.InvalidEntries += n
		}
		if programmed != nil {
			n := programmed[name]
			rs.Programmed = &n
		}
		st.Remotes = append(st.Remotes, rs)
	}
	for name, s := range c.unserved {
		if _, ok := c.pushed[name]; ok {
			continue
		}
		rs := RemoteStatus{
			Cluster: name, ClusterID: s.ClusterID, Since: s.Since, LastHeartbeat: s.LastHeartbeat,
			Reason:    "not served by the cache: " + s.Reason,
			LastError: c.lastErr, LastErrorTime: c.lastErrTime, Failures: c.failures,
		}
		if !c.connected {
			rs.Reason = "cache not answering, state as last served: " + c.connReason + "; " + rs.Reason
		}
		if programmed != nil {
			n := programmed[name]
			rs.Programmed = &n
		}
		st.Remotes = append(st.Remotes, rs)
	}
	slices.SortFunc(st.Remotes, func(a, b RemoteStatus) int { return strings.Compare(a.Cluster, b.Cluster) })
	return st
}

// cacheView is what one session has read of the cache prefix. The session's
// goroutine owns it, except epochRead, which the probe calls.
type cacheView struct {
	mu    sync.Mutex // protects epoch
	epoch string

	listed      bool
	cacheSynced bool
	clusters    map[string]*cachedCluster
	dirty       map[string]bool
	// deleted holds the clusters whose config was deleted during this
	// session (and has not come back).
	deleted map[string]bool
}

// cachedCluster is one remote cluster in a cacheView: the raw config and
// status, and the entries validated against the config exactly as direct
// mode validates what it reads from the remote itself.
type cachedCluster struct {
	rawCfg []byte
	cfg    *meshapi.ClusterConfig
	status *meshapi.CacheStatus
	state  *clusterState
	// pending holds shards that arrived before the config (shard key ->
	// value); they are validated when it arrives.
	pending map[string][]byte
	// shards holds per shard key the wire keys it carries and a hash of
	// each value; owner says which shard carries a wire key now.
	shards       map[string]map[string]uint64
	owner        map[string]string
	invalidTotal map[string]uint64
	lastInvalid  string
}

func newCacheView() *cacheView {
	return &cacheView{clusters: make(map[string]*cachedCluster), dirty: make(map[string]bool), deleted: make(map[string]bool)}
}

func (v *cacheView) epochRead() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.epoch
}

func (v *cacheView) cluster(name string) *cachedCluster {
	cl := v.clusters[name]
	if cl == nil {
		cl = &cachedCluster{pending: make(map[string][]byte), shards: make(map[string]map[string]uint64), owner: make(map[string]string), invalidTotal: make(map[string]uint64)}
		v.clusters[name] = cl
	}
	return cl
}

// apply folds one event of the cache prefix in. It fails only when the
// session must start over: a cluster's config changed (every entry must be
// validated again, as direct mode reconnects) or the epoch changed.
func (v *cacheView) apply(ev kvstore.Event) error {
	switch {
	case ev.Kind == kvstore.Listed:
		v.listed = true
		return nil
	case ev.Key == meshapi.CacheEpochKey:
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.epoch != "" && string(ev.Value) != v.epoch {
			return fmt.Errorf("%w: epoch key rewritten", errReplicaChanged)
		}
		v.epoch = string(ev.Value)
		return nil
	case ev.Key == meshapi.CacheSyncedKey:
		v.cacheSynced = ev.Kind == kvstore.Upsert
		return nil
	}
	rest := strings.TrimPrefix(ev.Key, meshapi.CacheRoot)
	kind, tail, _ := strings.Cut(rest, "/")
	name, _, _ := strings.Cut(tail, "/")
	if meshapi.ValidateClusterName(name) != nil {
		return nil // not ours to read; the cache writes no such key
	}
	switch kind {
	case "cluster-config":
		return v.applyConfig(name, ev)
	case "status":
		cl := v.cluster(name)
		cl.status = nil
		if ev.Kind == kvstore.Upsert {
			cl.status, _ = meshapi.DecodeCacheStatus(ev.Value) // an undecodable status is "not synced"
		}
		v.dirty[name] = true
	case "shards":
		v.applyShard(name, ev)
	}
	return nil
}

func (v *cacheView) applyConfig(name string, ev kvstore.Event) error {
	v.dirty[name] = true
	if ev.Kind == kvstore.Delete {
		delete(v.clusters, name)
		v.deleted[name] = true
		return nil
	}
	delete(v.deleted, name)
	cl := v.cluster(name)
	if cl.rawCfg != nil {
		if bytes.Equal(cl.rawCfg, ev.Value) {
			return nil
		}
		return fmt.Errorf("%w: cluster %s", errConfigChanged, name)
	}
	cl.rawCfg = ev.Value
	cc, err := meshapi.DecodeClusterConfig(ev.Value)
	if err == nil && cc.Name != name {
		err = fmt.Errorf("%w: cluster config under %s names cluster %s", meshapi.ErrMismatch, name, cc.Name)
	}
	if err != nil {
		cl.lastInvalid = ev.Key + ": " + err.Error()
		cl.invalidTotal[InvalidReason(err)]++
		return nil // the cluster stays without a config: nothing of it is pushed
	}
	cl.cfg = cc
	cl.state = newClusterState(cc)
	for key, val := range cl.pending {
		cl.applyShard(key, val)
	}
	cl.pending = nil
	return nil
}

// applyShard folds a shard event in: held until the cluster's config
// arrives, then applied entry by entry.
func (v *cacheView) applyShard(name string, ev kvstore.Event) {
	v.dirty[name] = true
	cl := v.cluster(name)
	var value []byte
	if ev.Kind == kvstore.Upsert {
		value = ev.Value
	}
	if cl.state == nil {
		if value == nil {
			delete(cl.pending, ev.Key)
		} else if cl.rawCfg == nil {
			cl.pending[ev.Key] = value
		}
		return
	}
	cl.applyShard(ev.Key, value)
}

// applyShard replaces what shard held (nil: the shard is gone) with what it
// holds now: each entry that is new or changed goes through the same decode
// and validation as in direct mode, under its wire key; an entry the shard
// no longer holds is deleted unless another shard took it over (the shard
// count changed). An undecodable shard withdraws what it held.
func (cl *cachedCluster) applyShard(shardKey string, value []byte) {
	var entries map[string]json.RawMessage
	if value != nil {
		s, err := meshapi.DecodeCacheShard(value)
		if err != nil {
			cl.invalidTotal[InvalidReason(err)]++
			cl.lastInvalid = shardKey + ": " + err.Error()
		} else {
			entries = s.Entries
		}
	}
	old := cl.shards[shardKey]
	next := make(map[string]uint64, len(entries))
	for key, raw := range entries {
		h := fnv.New64a()
		h.Write(raw)
		sum := h.Sum64()
		next[key] = sum
		cl.owner[key] = shardKey
		if prev, ok := old[key]; ok && prev == sum {
			continue
		}
		cl.applyWire(key, kvstore.Event{Kind: kvstore.Upsert, Key: key, Value: raw})
	}
	for key := range old {
		if _, ok := next[key]; !ok && cl.owner[key] == shardKey {
			delete(cl.owner, key)
			cl.applyWire(key, kvstore.Event{Kind: kvstore.Delete, Key: key})
		}
	}
	if value == nil {
		delete(cl.shards, shardKey)
	} else {
		cl.shards[shardKey] = next
	}
}

func (cl *cachedCluster) applyWire(key string, ev kvstore.Event) {
	if err := cl.state.apply(key, ev); err != nil {
		reason := InvalidReason(err)
		cl.invalidTotal[reason]++
		cl.lastInvalid = key + ": " + err.Error()
	}
}
