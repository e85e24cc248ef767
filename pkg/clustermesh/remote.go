package clustermesh

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// errRefused marks a remote whose own cluster config cannot be accepted: its
// entries are withdrawn and its claim released until it changes.
var errRefused = errors.New("refused")

// errConfigChanged ends a session whose remote rewrote its cluster config,
// so the next session validates and admits it again.
var errConfigChanged = errors.New("remote cluster config changed")

// remote is one remote cluster named by a file in the config directory. Each
// version of the file runs as one generation: a goroutine that connects,
// validates, and keeps the cluster's entries in the desired set, reconnecting
// with backoff. A newer generation (file changed) or removal makes the
// older one's writes no-ops (Mesh.push checks the generation).
type remote struct {
	name string
	mesh *Mesh
	log  logrus.FieldLogger

	// mu protects everything below.
	mu     sync.Mutex
	gen    uint64
	cancel context.CancelFunc
	hash   [32]byte
	// up is true while a session is connected, admitted and listed.
	up bool
	// phase says why the cluster is not up ("connecting", "refused: ...").
	phase      string
	clusterID  uint32
	everSynced bool
	ready      bool
	since      time.Time
	heartbeat  time.Time
	// hbChanged is the local time the heartbeat value was last seen to
	// change (zero until a change after the first read).
	hbChanged   time.Time
	hbErr       string
	nodes       int
	endpoints   int
	prefixes    int
	noNode      int
	duplicates  int
	invalidNow  map[string]int
	invalidAll  map[string]uint64
	lastInvalid string
	lastErr     string
	lastErrTime time.Time
	failures    uint64
}

func newRemote(m *Mesh, name string) *remote {
	return &remote{
		name:       name,
		mesh:       m,
		log:        m.log.WithField("cluster", name),
		phase:      "connecting",
		since:      m.now(),
		invalidAll: make(map[string]uint64),
	}
}

// start begins a new generation for file f, stopping the previous one. The
// caller holds m.mu.
func (r *remote) start(ctx context.Context, f RemoteFile) {
	ctx, cancel := context.WithCancel(ctx)
	r.mu.Lock()
	if r.cancel != nil {
		r.cancel()
	}
	r.gen++
	gen := r.gen
	r.cancel = cancel
	r.hash = f.Hash
	r.up = false
	if f.Err != nil {
		r.phase = "config error: " + f.Err.Error()
		r.recordErrorLocked(f.Err)
	} else {
		r.phase = "connecting"
	}
	r.mu.Unlock()
	if f.Err != nil {
		r.log.WithError(f.Err).Warn("Remote cluster file unusable; keeping its last known state")
		cancel()
		return
	}
	r.mesh.wg.Add(1)
	go func() {
		defer r.mesh.wg.Done()
		defer cancel()
		r.run(ctx, gen, f.Config)
	}()
}

func (r *remote) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	if r.cancel != nil {
		r.cancel()
		r.cancel = nil
	}
}

func (r *remote) generation() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen
}

// update runs f under r.mu if gen is still current.
func (r *remote) update(gen uint64, f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen != gen {
		return
	}
	f()
	r.refreshReadyLocked(r.mesh.now())
}

func (r *remote) recordErrorLocked(err error) {
	r.lastErr = err.Error()
	r.lastErrTime = r.mesh.now()
	r.failures++
}

// refreshReadyLocked recomputes readiness and records when it flipped.
func (r *remote) refreshReadyLocked(now time.Time) {
	ready := r.up && r.hbErr == "" && r.heartbeatFreshLocked(now)
	if ready != r.ready {
		r.ready = ready
		r.since = now
	}
}

func (r *remote) reasonLocked(now time.Time) string {
	switch {
	case !r.up:
		return r.phase
	case r.hbErr != "":
		return r.hbErr
	case r.heartbeat.IsZero():
		return "no heartbeat published"
	case !r.heartbeatFreshLocked(now):
		return fmt.Sprintf("heartbeat stale: last %s, older than %s", r.heartbeat.UTC().Format(time.RFC3339), r.mesh.opts.Timing.HeartbeatStaleAfter)
	}
	return ""
}

// heartbeatFreshLocked: the remote's timestamp is recent by the local clock,
// or the value has changed recently (the remote apiserver is alive even if
// the clusters' clocks disagree).
func (r *remote) heartbeatFreshLocked(now time.Time) bool {
	stale := r.mesh.opts.Timing.HeartbeatStaleAfter
	if r.heartbeat.IsZero() {
		return false
	}
	return now.Sub(r.heartbeat) <= stale || (!r.hbChanged.IsZero() && now.Sub(r.hbChanged) <= stale)
}

// run keeps one generation connected until ctx is done.
func (r *remote) run(ctx context.Context, gen uint64, cfg *kvstore.Config) {
	kvstore.CheckKeyMode(cfg.KeyFile, r.log)
	bo := kvstore.Backoff{Min: r.mesh.opts.Timing.BackoffMin, Max: r.mesh.opts.Timing.BackoffMax}
	for {
		established, wake, err := r.session(ctx, gen, cfg)
		if ctx.Err() != nil {
			return
		}
		if established {
			bo.Reset()
		}
		delay := bo.Next()
		if errors.Is(err, errConfigChanged) {
			delay = 0
		}
		r.update(gen, func() {
			r.up = false
			r.phase = err.Error()
			if !errors.Is(err, errConfigChanged) { // a re-read, not a failure
				r.recordErrorLocked(err)
			}
		})
		r.log.WithError(err).WithField("retry_in", delay.Round(time.Millisecond).String()).Warn("Remote cluster session ended; keeping its last known state")
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-wake:
			t.Stop()
		}
	}
}

// session is one connection: read and admit the cluster config, wait for
// the sync canaries, then list and watch nodes and endpoints, pushing the
// computed entries to the desired set after every batch once both are
// listed. It returns whether the cluster got synced, a channel that is
// closed when retrying may succeed earlier than the backoff (conflicts), and
// why it ended.
func (r *remote) session(ctx context.Context, gen uint64, cfg *kvstore.Config) (established bool, wake <-chan struct{}, err error) {
	t := r.mesh.opts.Timing
	cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{DialTimeout: t.DialTimeout, KeepAlive: t.ProbeInterval})
	if err != nil {
		return false, nil, err
	}
	defer cli.Close()
	sctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)

	r.update(gen, func() {
		if r.lastErr == "" {
			r.phase = "connecting"
		} // else keep saying why the last session failed while retrying
	})
	cc, rev, err := r.readClusterConfig(sctx, cli)
	if errors.Is(err, errRefused) {
		r.mesh.refuse(r, gen)
	} else if err != nil && sctx.Err() == nil {
		// The client says only "deadline exceeded"; say why if it is TLS.
		pctx, pcancel := context.WithTimeout(sctx, t.ProbeTimeout)
		if perr := kvstore.ProbeTLS(pctx, cfg); perr != nil {
			err = fmt.Errorf("unreachable: %w", perr)
		}
		pcancel()
	}
	if err != nil {
		return false, nil, err
	}
	wake = r.mesh.registry.Changed()
	if err := r.mesh.admit(r, gen, cc); err != nil {
		return false, wake, err
	}
	r.update(gen, func() { r.clusterID = cc.ID })

	wg.Go(func() { r.probe(sctx, cancel, gen, cli) })
	wg.Go(func() { r.watchClusterConfig(sctx, cancel, cli, rev) })

	if err := r.waitCanaries(sctx, gen, cli); err != nil {
		return false, nil, sessionErr(sctx, err)
	}

	r.update(gen, func() { r.phase = "listing nodes and endpoints" })
	type tagged struct {
		prefix string
		ev     kvstore.Event
	}
	events := make(chan tagged, 1024)
	for _, prefix := range []string{meshapi.NodesClusterPrefix(r.name), meshapi.EndpointsClusterPrefix(r.name)} {
		lw := &kvstore.ListWatcher{Client: cli, Prefix: prefix, Backoff: kvstore.Backoff{Min: t.BackoffMin, Max: t.BackoffMax}, Log: r.log}
		wg.Go(func() {
			_ = lw.Run(sctx, func(ev kvstore.Event) {
				select {
				case events <- tagged{prefix, ev}:
				case <-sctx.Done():
				}
			})
		})
	}

	state := newClusterState(cc)
	for {
		select {
		case <-sctx.Done():
			return established, nil, sessionErr(sctx, nil)
		case tev := <-events:
			r.applyLogged(state, tev.prefix, tev.ev)
		drain:
			for range cap(events) {
				select {
				case tev := <-events:
					r.applyLogged(state, tev.prefix, tev.ev)
				default:
					break drain
				}
			}
		}
		if len(state.listed) < 2 {
			continue
		}
		entries, st := ComputeEntries(r.name, cc.ID, r.mesh.opts.LocalTunnelIP, state.nodes, state.endpoints)
		if !r.mesh.push(r, gen, cc.PodCIDRs, entries) {
			return established, nil, sessionErr(sctx, errSuperseded)
		}
		r.update(gen, func() {
			r.up = true
			r.phase = ""
			r.nodes, r.endpoints, r.prefixes = len(state.nodes), len(state.endpoints), len(entries)
			r.noNode, r.duplicates = st.EndpointsWithoutNode, st.DuplicatePrefixes
			r.invalidNow = state.invalidByReason()
		})
		if !established {
			established = true
			r.log.WithFields(logrus.Fields{"nodes": len(state.nodes), "endpoints": len(state.endpoints), "prefixes": len(entries)}).Info("Remote cluster synced")
			r.mesh.remoteSynced(r, gen)
		}
	}
}

// sessionErr prefers the cause a session was cancelled with.
func sessionErr(sctx context.Context, err error) error {
	if cause := context.Cause(sctx); cause != nil && sctx.Err() != nil {
		return cause
	}
	if err == nil {
		return errors.New("session ended")
	}
	return err
}

func (r *remote) applyLogged(state *clusterState, prefix string, ev kvstore.Event) {
	err := state.apply(prefix, ev)
	if err == nil {
		return
	}
	reason := InvalidReason(err)
	r.log.WithError(err).WithFields(logrus.Fields{"key": ev.Key, "reason": reason}).Warn("Refusing invalid remote entry")
	r.mu.Lock()
	r.invalidAll[reason]++
	r.lastInvalid = ev.Key + ": " + err.Error()
	r.mu.Unlock()
}

// readClusterConfig reads and checks the remote's own cluster config: exactly
// its key, whatever else the remote's etcd holds (a cache tier holds the
// configs of many clusters). When the key is missing but the remote
// publishes configs for other clusters, the file points at the wrong
// remote: that is a refusal naming a few of those clusters.
func (r *remote) readClusterConfig(ctx context.Context, cli *clientv3.Client) (*meshapi.ClusterConfig, int64, error) {
	cctx, cancel := context.WithTimeout(ctx, r.mesh.opts.Timing.ProbeTimeout)
	defer cancel()
	resp, err := cli.Get(cctx, meshapi.ClusterConfigKey(r.name))
	if err != nil {
		return nil, 0, fmt.Errorf("unreachable: read cluster config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, r.missingClusterConfig(cctx, cli)
	}
	cc, err := meshapi.DecodeClusterConfig(resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: invalid cluster config: %w", errRefused, err)
	}
	if cc.Name != r.name {
		return nil, 0, fmt.Errorf("%w: %w: cluster config of file %s names cluster %s", errRefused, meshapi.ErrMismatch, r.name, cc.Name)
	}
	return cc, resp.Header.Revision, nil
}

// maxNamedOthers bounds how many other clusters a refusal names.
const maxNamedOthers = 8

// missingClusterConfig says why the remote's own config key is empty: it
// publishes other clusters' configs (refused), or none yet (retried).
func (r *remote) missingClusterConfig(ctx context.Context, cli *clientv3.Client) error {
	resp, err := cli.Get(ctx, meshapi.ClusterConfigPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithLimit(maxNamedOthers), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return fmt.Errorf("unreachable: list cluster configs: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("no cluster config published at %s", meshapi.ClusterConfigKey(r.name))
	}
	others := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		others = append(others, strings.TrimPrefix(string(kv.Key), meshapi.ClusterConfigPrefix))
	}
	list := strings.Join(others, ", ")
	if resp.Count > int64(len(others)) {
		list += fmt.Sprintf(" and %d more", resp.Count-int64(len(others)))
	}
	return fmt.Errorf("%w: %w: remote publishes cluster config for %s, not %s", errRefused, meshapi.ErrMismatch, list, r.name)
}

// watchClusterConfig ends the session when the cluster config changes.
func (r *remote) watchClusterConfig(ctx context.Context, cancel context.CancelCauseFunc, cli *clientv3.Client, rev int64) {
	for resp := range cli.Watch(ctx, meshapi.ClusterConfigKey(r.name), clientv3.WithRev(rev+1)) {
		if resp.Err() != nil || len(resp.Events) > 0 {
			cancel(errConfigChanged)
			return
		}
	}
}

// waitCanaries returns once every kind in meshapi.SyncedKinds has its canary.
func (r *remote) waitCanaries(ctx context.Context, gen uint64, cli *clientv3.Client) error {
	prefix := meshapi.SyncedClusterPrefix(r.name)
	have := make(map[string]bool)
	missing := func() []string {
		var out []string
		for _, k := range meshapi.SyncedKinds {
			if !have[k] {
				out = append(out, k)
			}
		}
		return out
	}
	gctx, gcancel := context.WithTimeout(ctx, r.mesh.opts.Timing.ProbeTimeout)
	resp, err := cli.Get(gctx, prefix, clientv3.WithPrefix())
	gcancel()
	if err != nil {
		return fmt.Errorf("unreachable: read sync canaries: %w", err)
	}
	for _, kv := range resp.Kvs {
		have[strings.TrimPrefix(string(kv.Key), prefix)] = true
	}
	if len(missing()) == 0 {
		return nil
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for {
		m := missing()
		if len(m) == 0 {
			return nil
		}
		r.update(gen, func() { r.phase = "waiting for sync canaries: " + strings.Join(m, ", ") })
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				return fmt.Errorf("watch sync canaries: %w", errors.Join(wr.Err(), ctx.Err()))
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					have[strings.TrimPrefix(string(ev.Kv.Key), prefix)] = true
				}
			}
		}
	}
}

// probe reads the heartbeat every ProbeInterval. A failed read means the
// remote is unreachable and ends the session (the entries stay).
func (r *remote) probe(ctx context.Context, cancel context.CancelCauseFunc, gen uint64, cli *clientv3.Client) {
	t := r.mesh.opts.Timing
	ticker := time.NewTicker(t.ProbeInterval)
	defer ticker.Stop()
	for {
		pctx, pcancel := context.WithTimeout(ctx, t.ProbeTimeout)
		resp, err := cli.Get(pctx, meshapi.HeartbeatKey(r.name))
		pcancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			cancel(fmt.Errorf("unreachable: read heartbeat: %w", err))
			return
		}
		var hb time.Time
		var hbErr string
		if len(resp.Kvs) > 0 {
			if hb, err = meshapi.ParseTime(resp.Kvs[0].Value); err != nil {
				hbErr = "invalid heartbeat: " + err.Error()
			}
		}
		r.update(gen, func() {
			if !r.heartbeat.IsZero() && !hb.Equal(r.heartbeat) {
				r.hbChanged = r.mesh.now()
			}
			r.heartbeat, r.hbErr = hb, hbErr
		})
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
