package cache

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// MaxTxnOps and MaxTxnBytes bound one write transaction (etcd's defaults
// are 128 operations and 1.5 MiB per request); a single operation larger
// than MaxTxnBytes still goes alone (a shard is at most 1 MiB).
const (
	MaxTxnOps   = 128
	MaxTxnBytes = 1 << 20
)

// Options configure a Cache.
type Options struct {
	Cluster   string
	ClusterID uint32
	PodCIDRs  []netip.Prefix
	// ConfigDir holds one etcd-client YAML file per remote cluster, in the
	// agents' format.
	ConfigDir string
	// Etcd writes the cache; its user must be allowed to read and write
	// meshapi.CacheRoot.
	Etcd *clientv3.Client
	// SyncTimeout ends the wait for every remote's first sync: then the
	// canary is written and leftovers of a previous run are pruned.
	SyncTimeout time.Duration
	// StatusInterval is how often remote statuses are compared with what
	// the cache holds (a change is written at the next pass).
	StatusInterval time.Duration
	Timing         clustermesh.Timing
	Log            logrus.FieldLogger

	// Services, when set, receives every remote's exported services from
	// the cache's sessions (the service importer reads them there instead
	// of dialling the remotes itself); they are not written to etcd.
	Services clustermesh.ServiceSink
}

// Cache mirrors the remote clusters into the local etcd.
type Cache struct {
	opts   Options
	log    logrus.FieldLogger
	mesh   *clustermesh.Mesh
	wake   chan struct{}
	synced chan struct{}

	// mu protects want, dirty, removed, encoders and pruneAllowed.
	mu sync.Mutex
	// want holds per cluster the entries it should have (config, nodes,
	// endpoints), replaced as a whole, never modified in place.
	want map[string]map[string][]byte
	// dirty holds the clusters whose want changed since the writer last
	// took them (or whose write failed).
	dirty map[string]bool
	// removed holds clusters to delete from the cache now, even before
	// pruning is allowed.
	removed map[string]bool
	// encoders keep per cluster what its last entries were encoded from.
	encoders     map[string]*encoder
	pruneAllowed bool
}

// New returns a Cache; Run starts it.
func New(opts Options) (*Cache, error) {
	if opts.Etcd == nil {
		return nil, errors.New("cache: no etcd client")
	}
	if opts.Log == nil {
		opts.Log = logrus.New()
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 200 * time.Millisecond
	}
	opts.Timing = withCacheTiming(opts.Timing)
	c := &Cache{
		opts:     opts,
		log:      opts.Log.WithField("component", "cache"),
		wake:     make(chan struct{}, 1),
		synced:   make(chan struct{}),
		want:     make(map[string]map[string][]byte),
		dirty:    make(map[string]bool),
		removed:  make(map[string]bool),
		encoders: make(map[string]*encoder),
	}
	m, err := clustermesh.New(clustermesh.Options{
		LocalCluster: opts.Cluster, LocalClusterID: opts.ClusterID, LocalPodCIDRs: opts.PodCIDRs,
		ConfigDir: opts.ConfigDir, Desired: (*desired)(c), States: (*states)(c), Services: opts.Services,
		SyncTimeout: opts.SyncTimeout, Timing: opts.Timing, Log: c.log,
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.mesh = m
	return c, nil
}

// CacheTiming is what the cache runs its remote sessions with where
// Options.Timing leaves a field zero: one process watches every remote, so
// liveness reads are rarer and more patient than an agent's (a remote that
// dies is still reported stale within ProbeInterval + ProbeTimeout, 3 s),
// and a busy cache does not end sessions, and re-list remotes, for a slow
// answer.
var CacheTiming = clustermesh.Timing{
	ProbeInterval:  time.Second,
	ProbeTimeout:   2 * time.Second,
	RequestTimeout: 15 * time.Second,
}

func withCacheTiming(t clustermesh.Timing) clustermesh.Timing {
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.ProbeInterval, &CacheTiming.ProbeInterval},
		{&t.ProbeTimeout, &CacheTiming.ProbeTimeout},
		{&t.RequestTimeout, &CacheTiming.RequestTimeout},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return t
}

// Synced is closed once the cache's canary is written: every configured
// remote synced once, or the sync timeout passed.
func (c *Cache) Synced() <-chan struct{} { return c.synced }

// Status is the cache's view of every remote (the agent's status format).
func (c *Cache) Status() clustermesh.Status { return c.mesh.Status() }

// Mesh is the remote-cluster watcher the cache runs (metrics, status).
func (c *Cache) Mesh() *clustermesh.Mesh { return c.mesh }

func (c *Cache) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// desired is the clustermesh.DesiredSet side of the cache: removals and the
// permission to prune; entries come through states.
type desired Cache

func (d *desired) SetCluster(string, []netip.Prefix, []datapath.Entry) {}

func (d *desired) RemoveCluster(cluster string) {
	c := (*Cache)(d)
	c.mu.Lock()
	delete(c.want, cluster)
	delete(c.encoders, cluster)
	c.removed[cluster] = true
	c.dirty[cluster] = true
	c.mu.Unlock()
	c.kick()
}

func (d *desired) AllowPrune() {
	c := (*Cache)(d)
	c.mu.Lock()
	c.pruneAllowed = true
	c.mu.Unlock()
	c.kick()
}

// states receives each remote's validated state.
type states Cache

func (s *states) SetClusterState(cc *meshapi.ClusterConfig, nodes map[string]*meshapi.Node, endpoints map[string]*meshapi.Endpoint) {
	c := (*Cache)(s)
	c.mu.Lock()
	enc := c.encoders[cc.Name]
	if enc == nil {
		enc = new(encoder)
		c.encoders[cc.Name] = enc
	}
	c.mu.Unlock()
	want, err := enc.entries(cc, nodes, endpoints)
	if err != nil {
		c.log.WithError(err).WithField("cluster", cc.Name).Error("Cannot encode a remote cluster for the cache; keeping what the cache holds")
		return
	}
	c.mu.Lock()
	c.want[cc.Name] = want
	delete(c.removed, cc.Name)
	c.dirty[cc.Name] = true
	c.mu.Unlock()
	c.kick()
}

// Run mirrors the remotes into etcd until ctx is done. The cache's keys stay
// in etcd when it returns (a restart serves them, marked not ready).
func (c *Cache) Run(ctx context.Context) error {
	epoch, err := c.ensureEpoch(ctx)
	if err != nil {
		return err
	}
	have, err := c.list(ctx)
	if err != nil {
		return err
	}
	have[meshapi.CacheEpochKey] = []byte(epoch)
	c.log.WithFields(logrus.Fields{"keys": len(have), "epoch": epoch}).Info("Cache starting")

	meshErr := make(chan error, 1)
	mctx, stop := context.WithCancel(ctx)
	defer func() { stop(); <-meshErr }()
	go func() { meshErr <- c.mesh.Run(mctx) }()

	w := newWriter(c, have)
	ticker := time.NewTicker(c.opts.StatusInterval)
	defer ticker.Stop()
	meshSynced := c.mesh.Synced()
	for {
		if err := w.flush(ctx); err != nil && ctx.Err() == nil {
			c.log.WithError(err).Warn("Writing the cache failed; retrying")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-ticker.C:
		case <-meshSynced:
			meshSynced = nil // closed: wake once
		}
	}
}

// ensureEpoch returns the epoch of this etcd, creating it once.
func (c *Cache) ensureEpoch(ctx context.Context) (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("cache epoch: %w", err)
	}
	fresh := base64.RawURLEncoding.EncodeToString(b)
	k := meshapi.CacheEpochKey
	resp, err := c.opts.Etcd.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, fresh)).
		Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return "", fmt.Errorf("cache epoch: %w", err)
	}
	if resp.Succeeded {
		return fresh, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return "", errors.New("cache epoch: vanished while read")
	}
	return string(kvs[0].Value), nil
}

// list reads every key the cache holds (a previous run's, after a restart).
func (c *Cache) list(ctx context.Context) (map[string][]byte, error) {
	have := make(map[string][]byte)
	key, end := meshapi.CacheRoot, clientv3.GetPrefixRangeEnd(meshapi.CacheRoot)
	for {
		resp, err := c.opts.Etcd.Get(ctx, key, clientv3.WithRange(end), clientv3.WithLimit(1000))
		if err != nil {
			return nil, fmt.Errorf("list the cache: %w", err)
		}
		for _, kv := range resp.Kvs {
			have[string(kv.Key)] = kv.Value
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return have, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// writer owns what etcd holds under CacheRoot (have, and the same keys by
// cluster); only Run's goroutine uses it. A pass costs the clusters that
// changed, not the whole cache.
type writer struct {
	c         *Cache
	have      map[string][]byte
	byCluster map[string]map[string]bool
	synced    bool
	pruned    bool
}

func newWriter(c *Cache, have map[string][]byte) *writer {
	w := &writer{c: c, have: have, byCluster: make(map[string]map[string]bool)}
	for k := range have {
		w.track(k, true)
	}
	return w
}

// track records that key is (held) or is not held, by cluster.
func (w *writer) track(key string, held bool) {
	cluster := keyCluster(key)
	if cluster == "" {
		return
	}
	m := w.byCluster[cluster]
	if held {
		if m == nil {
			m = make(map[string]bool)
			w.byCluster[cluster] = m
		}
		m[key] = true
		return
	}
	delete(m, key)
	if len(m) == 0 {
		delete(w.byCluster, cluster)
	}
}

// flush writes what changed: the entries of the dirty clusters, every
// remote's status, the canary, and (once) the pruning of a previous run's
// clusters that are no longer configured.
func (w *writer) flush(ctx context.Context) error {
	c := w.c
	c.mu.Lock()
	dirty := c.dirty
	c.dirty = make(map[string]bool)
	want := make(map[string]map[string][]byte, len(dirty))
	for name := range dirty {
		if m, ok := c.want[name]; ok {
			want[name] = m
		}
	}
	wanted := make(map[string]bool, len(c.want))
	for name := range c.want {
		wanted[name] = true
	}
	removed := maps.Clone(c.removed)
	prune := c.pruneAllowed && !w.pruned
	c.mu.Unlock()

	var ops []op
	put := func(k string, v []byte) {
		if old, ok := w.have[k]; !ok || !bytes.Equal(old, v) {
			ops = append(ops, op{key: k, value: v})
		}
	}
	del := func(k string) {
		if _, ok := w.have[k]; ok {
			ops = append(ops, op{key: k, delete: true})
		}
	}
	for name := range dirty {
		m, ok := want[name]
		for k, v := range m {
			put(k, v)
		}
		if !ok && !removed[name] {
			continue // nothing wanted yet: keep what a previous run left
		}
		for k := range w.byCluster[name] {
			if _, keep := m[k]; !keep && !strings.HasPrefix(k, meshapi.CacheStatusPrefix) {
				del(k)
			}
		}
	}
	if prune {
		for name, keys := range w.byCluster {
			if !wanted[name] {
				for k := range keys {
					del(k)
				}
			}
		}
	}

	statuses, err := w.statuses(wanted, removed)
	if err != nil {
		return err
	}
	pruneAllowed := prune || w.pruned
	for name := range w.byCluster {
		k := meshapi.CacheStatusKey(name)
		if _, ok := statuses[k]; !ok && (removed[name] || pruneAllowed && !wanted[name]) {
			del(k)
		}
	}
	for k, v := range statuses {
		put(k, v)
	}
	meshSynced := false
	select {
	case <-c.mesh.Synced():
		meshSynced = true
	default:
	}
	if meshSynced && !w.synced {
		put(meshapi.CacheSyncedKey, []byte(meshapi.FormatTime(time.Now())))
	}

	slices.SortFunc(ops, func(a, b op) int { return cmp.Or(cmp.Compare(a.rank(), b.rank()), strings.Compare(a.key, b.key)) })
	if err := w.write(ctx, ops); err != nil {
		c.mu.Lock()
		for name := range dirty {
			c.dirty[name] = true // retried by the next pass
		}
		c.mu.Unlock()
		return err
	}
	c.mu.Lock()
	for name := range removed {
		if c.removed[name] && len(w.byCluster[name]) == 0 {
			delete(c.removed, name)
		}
	}
	c.mu.Unlock()
	w.pruned = w.pruned || prune
	if meshSynced && !w.synced {
		w.synced = true
		close(c.synced)
		c.log.Info("Cache synced: every configured remote synced once, or the sync timeout passed")
	}
	return nil
}

// statuses computes the status key of every configured remote: synced for
// those whose entries the cache holds (wanted now, or left by a previous run
// and not removed), and not synced, with the reason, for those it holds
// nothing of (not reached yet, refused), so that every agent can say why a
// remote has no entries.
func (w *writer) statuses(wanted, removed map[string]bool) (map[string][]byte, error) {
	out := make(map[string][]byte)
	for _, rs := range w.c.mesh.Status().Remotes {
		synced := wanted[rs.Cluster] || (w.holdsEntries(rs.Cluster) && !removed[rs.Cluster])
		st := meshapi.CacheStatus{Cluster: rs.Cluster, ClusterID: rs.ClusterID, Synced: synced, Ready: rs.Ready && synced, Reason: rs.Reason, Since: rs.Since.UTC(), Format: meshapi.CacheFormat}
		if !st.Ready {
			st.LastHeartbeat = rs.LastHeartbeat.UTC()
			if st.Reason == "" {
				st.Reason = "not synced yet"
			}
			if rs.LastError != "" && !strings.Contains(st.Reason, rs.LastError) {
				st.Reason += "; last error: " + rs.LastError
			}
		}
		if st.ClusterID == 0 { // known from the previous run's config only
			st.ClusterID = w.heldClusterID(rs.Cluster)
		}
		b, err := meshapi.Encode(st)
		if err != nil {
			return nil, err
		}
		out[meshapi.CacheStatusKey(rs.Cluster)] = b
	}
	return out, nil
}

// holdsEntries reports whether the cache holds entries of cluster (any key
// but its status).
func (w *writer) holdsEntries(cluster string) bool {
	for k := range w.byCluster[cluster] {
		if !strings.HasPrefix(k, meshapi.CacheStatusPrefix) {
			return true
		}
	}
	return false
}

// write applies ops in order, in transactions of at most MaxTxnOps and
// MaxTxnBytes, updating have.
func (w *writer) write(ctx context.Context, ops []op) error {
	for len(ops) > 0 {
		n, size := 0, 0
		for n < len(ops) && n < MaxTxnOps {
			size += len(ops[n].key) + len(ops[n].value)
			if n > 0 && size > MaxTxnBytes {
				break
			}
			n++
		}
		batch := make([]clientv3.Op, 0, n)
		for _, o := range ops[:n] {
			if o.delete {
				batch = append(batch, clientv3.OpDelete(o.key))
			} else {
				batch = append(batch, clientv3.OpPut(o.key, string(o.value)))
			}
		}
		if _, err := w.c.opts.Etcd.Txn(ctx).Then(batch...).Commit(); err != nil {
			return fmt.Errorf("write %d cache keys: %w", n, err)
		}
		for _, o := range ops[:n] {
			if o.delete {
				delete(w.have, o.key)
			} else {
				w.have[o.key] = o.value
			}
			w.track(o.key, !o.delete)
		}
		ops = ops[n:]
	}
	return nil
}

func (w *writer) heldClusterID(cluster string) uint32 {
	cc, err := meshapi.DecodeClusterConfig(w.have[meshapi.CacheClusterConfigPrefix+cluster])
	if err != nil {
		return 0
	}
	return cc.ID
}

// op is one write of a flush.
type op struct {
	key    string
	value  []byte
	delete bool
}

// rank orders a flush: a cluster's config is written before its entries and
// deleted before them (agents withdraw a cluster on its config's deletion);
// statuses follow the entries they describe; the canary comes last.
func (o op) rank() int {
	switch {
	case o.key == meshapi.CacheSyncedKey:
		return 5
	case strings.HasPrefix(o.key, meshapi.CacheStatusPrefix):
		return 4
	case strings.HasPrefix(o.key, meshapi.CacheClusterConfigPrefix) && o.delete:
		return 0
	case strings.HasPrefix(o.key, meshapi.CacheClusterConfigPrefix):
		return 1
	case o.delete:
		return 3
	}
	return 2
}

// keyCluster returns the cluster a cache key belongs to ("" for the
// cache's own keys).
func keyCluster(key string) string {
	rest, ok := strings.CutPrefix(key, meshapi.CacheRoot)
	if !ok {
		return ""
	}
	_, tail, ok := strings.Cut(rest, "/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(tail, "/")
	return name
}
