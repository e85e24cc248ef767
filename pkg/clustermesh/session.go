package clustermesh

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// session is one connection to a remote cluster, in the manner of etcd's
// concurrency.Session: it owns its client and its context, runs until the
// connection fails, the remote's config changes, the registry displaces it
// or its parent context ends (the owner's way to close it), and then closes
// Done; Err says why.
//
// In order it dials, reads and admits the cluster config, waits for the
// sync canaries, then lists and watches nodes and endpoints, pushing the
// computed entries to the desired set after every batch once both are
// listed. A liveness probe runs beside it once the cluster is synced.
type session struct {
	mesh *Mesh
	r    *remote
	gen  uint64
	log  logrus.FieldLogger
	cli  *clientv3.Client

	ctx    context.Context
	cancel context.CancelCauseFunc
	donec  chan struct{}

	// lost is closed when the client's connection breaks.
	lost <-chan struct{}

	// lastHeard is when the remote last answered, in Unix nanoseconds.
	lastHeard atomic.Int64

	// Set by run before donec is closed; read only after Done.
	established bool
	wake        <-chan struct{}
	err         error
}

// openSession dials the remote of cfg and starts a session under parent.
func openSession(parent context.Context, m *Mesh, r *remote, gen uint64, cfg *kvstore.Config) (*session, error) {
	t := m.opts.Timing
	cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{DialTimeout: t.DialTimeout, KeepAlive: t.KeepAlive, KeepAliveTimeout: t.RequestTimeout})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(parent)
	s := &session{mesh: m, r: r, gen: gen, log: r.log, cli: cli, ctx: ctx, cancel: cancel, donec: make(chan struct{}),
		lost: kvstore.ConnectionLost(ctx, cli)}
	go s.run(cfg)
	return s, nil
}

// Done is closed when the session has ended and released its client.
func (s *session) Done() <-chan struct{} { return s.donec }

// Err says why the session ended; valid once Done is closed.
func (s *session) Err() error { return s.err }

// Established reports whether the session synced the cluster; valid once
// Done is closed.
func (s *session) Established() bool { return s.established }

// Wake is closed when retrying may succeed earlier than the backoff (a
// conflict that may have been lifted); nil when there is no such hope.
func (s *session) Wake() <-chan struct{} { return s.wake }

func (s *session) run(cfg *kvstore.Config) {
	defer close(s.donec)
	var wg sync.WaitGroup
	err := s.serve(&wg, cfg)
	s.cancel(err)
	wg.Wait()
	s.cli.Close()
	s.err = sessionErr(s.ctx, err)
}

// serve runs the phases of the session; its helpers run in wg.
func (s *session) serve(wg *sync.WaitGroup, cfg *kvstore.Config) error {
	wg.Go(func() { s.watchConnection(s.lost) })
	cc, rev, err := s.admit(cfg)
	if err != nil {
		return err
	}
	wg.Go(func() { s.watchClusterConfig(rev) })
	if err := s.waitCanaries(); err != nil {
		return err
	}
	return s.listWatch(wg, cc)
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

// admit reads the remote's cluster config and asks the mesh to admit it.
func (s *session) admit(cfg *kvstore.Config) (*meshapi.ClusterConfig, int64, error) {
	t := s.mesh.opts.Timing
	rec := s.r.rec
	rec.update(s.gen, func() {
		if rec.lastErr == "" {
			rec.phase = "connecting"
		} // else keep saying why the last session failed while retrying
	})
	cc, rev, err := s.readClusterConfig()
	if err != nil {
		s.mesh.presented(s.r.name)
	}
	if errors.Is(err, errRefused) {
		s.mesh.refuse(s.r, s.gen)
	} else if err != nil && s.ctx.Err() == nil {
		// The client says only "deadline exceeded"; say why if it is TLS.
		pctx, pcancel := context.WithTimeout(s.ctx, t.RequestTimeout)
		if perr := kvstore.ProbeTLS(pctx, cfg); perr != nil {
			err = fmt.Errorf("unreachable: %w", perr)
		}
		pcancel()
	}
	if err != nil {
		return nil, 0, err
	}
	s.wake = s.mesh.registry.Changed()
	if err := s.mesh.admit(s.ctx, s.r, s.gen, cc, s.cancel, t.RequestTimeout); err != nil {
		return nil, 0, err
	}
	s.wake = nil
	rec.update(s.gen, func() { rec.clusterID = cc.ID })
	return cc, rev, nil
}

// readClusterConfig reads and checks the remote's own cluster config: exactly
// its key, whatever else the remote's etcd holds (a cache tier holds the
// configs of many clusters). When the key is missing but the remote
// publishes configs for other clusters, the file points at the wrong
// remote: that is a refusal naming a few of those clusters.
func (s *session) readClusterConfig() (*meshapi.ClusterConfig, int64, error) {
	cctx, cancel := context.WithTimeout(s.ctx, s.mesh.opts.Timing.RequestTimeout)
	defer cancel()
	name := s.r.name
	resp, err := s.cli.Get(cctx, meshapi.ClusterConfigKey(name))
	if err != nil {
		return nil, 0, fmt.Errorf("unreachable: read cluster config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, s.missingClusterConfig(cctx)
	}
	cc, err := meshapi.DecodeClusterConfig(resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: invalid cluster config: %w", errRefused, err)
	}
	if cc.Name != name {
		return nil, 0, fmt.Errorf("%w: %w: cluster config of file %s names cluster %s", errRefused, meshapi.ErrMismatch, name, cc.Name)
	}
	return cc, resp.Header.Revision, nil
}

// maxNamedOthers bounds how many other clusters a refusal names.
const maxNamedOthers = 8

// missingClusterConfig says why the remote's own config key is empty: it
// publishes other clusters' configs (refused), or none yet (retried).
func (s *session) missingClusterConfig(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, meshapi.ClusterConfigPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithLimit(maxNamedOthers), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return fmt.Errorf("unreachable: list cluster configs: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("no cluster config published at %s", meshapi.ClusterConfigKey(s.r.name))
	}
	others := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		others = append(others, strings.TrimPrefix(string(kv.Key), meshapi.ClusterConfigPrefix))
	}
	list := strings.Join(others, ", ")
	if resp.Count > int64(len(others)) {
		list += fmt.Sprintf(" and %d more", resp.Count-int64(len(others)))
	}
	return fmt.Errorf("%w: %w: remote publishes cluster config for %s, not %s", errRefused, meshapi.ErrMismatch, list, s.r.name)
}

// watchClusterConfig ends the session when the cluster config changes.
func (s *session) watchClusterConfig(rev int64) {
	for resp := range s.cli.Watch(s.ctx, meshapi.ClusterConfigKey(s.r.name), clientv3.WithRev(rev+1)) {
		if resp.Err() != nil || len(resp.Events) > 0 {
			s.cancel(errConfigChanged)
			return
		}
	}
}

// waitCanaries returns once every kind in meshapi.SyncedKinds has its canary.
func (s *session) waitCanaries() error {
	prefix := meshapi.SyncedClusterPrefix(s.r.name)
	rec := s.r.rec
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
	gctx, gcancel := context.WithTimeout(s.ctx, s.mesh.opts.Timing.RequestTimeout)
	resp, err := s.cli.Get(gctx, prefix, clientv3.WithPrefix())
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
	wctx, wcancel := context.WithCancel(s.ctx)
	defer wcancel()
	wch := s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for {
		m := missing()
		if len(m) == 0 {
			return nil
		}
		rec.update(s.gen, func() { rec.phase = "waiting for sync canaries: " + strings.Join(m, ", ") })
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				return fmt.Errorf("watch sync canaries: %w", errors.Join(wr.Err(), s.ctx.Err()))
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					have[strings.TrimPrefix(string(ev.Kv.Key), prefix)] = true
				}
			}
		}
	}
}

// listWatch lists and watches nodes and endpoints (and services, for
// Options.Services) and keeps the cluster's entries in the desired set until
// the session ends.
func (s *session) listWatch(wg *sync.WaitGroup, cc *meshapi.ClusterConfig) error {
	t := s.mesh.opts.Timing
	rec := s.r.rec
	rec.update(s.gen, func() { rec.phase = "listing nodes and endpoints" })
	type tagged struct {
		prefix string
		ev     kvstore.Event
	}
	events := make(chan tagged, 1024)
	prefixes := []string{meshapi.NodesClusterPrefix(s.r.name), meshapi.EndpointsClusterPrefix(s.r.name)}
	state := newClusterState(cc)
	if s.mesh.opts.Services != nil {
		state.services, state.servicesDirty = make(map[string][]byte), true
		if p := s.mesh.servicesPrefix(cc); p != "" {
			prefixes = append(prefixes, p)
		}
	}
	for _, prefix := range prefixes {
		lw := &kvstore.ListWatcher{Client: s.cli, Prefix: prefix, Backoff: kvstore.Backoff{Min: t.BackoffMin, Max: t.BackoffMax}, Log: s.log}
		wg.Go(func() {
			_ = lw.Run(s.ctx, func(ev kvstore.Event) {
				s.alive()
				select {
				case events <- tagged{prefix, ev}:
				case <-s.ctx.Done():
				}
			})
		})
	}

	for {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case tev := <-events:
			s.applyLogged(state, tev.prefix, tev.ev)
		drain:
			for range cap(events) {
				select {
				case tev := <-events:
					s.applyLogged(state, tev.prefix, tev.ev)
				default:
					break drain
				}
			}
		}
		if len(state.listed) < len(prefixes) {
			continue
		}
		entries, st := ComputeEntries(s.r.name, cc.ID, s.mesh.opts.LocalTunnelIP, state.nodes, state.endpoints)
		if !s.mesh.push(s.r, s.gen, state, entries) {
			return errSuperseded
		}
		rec.update(s.gen, func() {
			rec.up = true
			rec.phase = ""
			rec.nodes, rec.endpoints, rec.prefixes = len(state.nodes), len(state.endpoints), len(entries)
			rec.noNode, rec.duplicates = st.EndpointsWithoutNode, st.DuplicatePrefixes
			rec.invalidNow = state.invalidByReason()
		})
		if !s.established {
			s.established = true
			// Liveness matters from now on: the cluster can be ready. (Before,
			// a slow bootstrap is bounded by RequestTimeout and keepalive.)
			wg.Go(func() { s.probe() })
			s.log.WithFields(logrus.Fields{"nodes": len(state.nodes), "endpoints": len(state.endpoints), "prefixes": len(entries)}).Info("Remote cluster synced")
			s.mesh.remoteSynced(s.r, s.gen)
		}
	}
}

func (s *session) applyLogged(state *clusterState, prefix string, ev kvstore.Event) {
	err := state.apply(prefix, ev)
	if err == nil {
		return
	}
	reason := InvalidReason(err)
	s.log.WithError(err).WithFields(logrus.Fields{"key": ev.Key, "reason": reason}).Warn("Refusing invalid remote entry")
	s.r.rec.invalid(reason, ev.Key+": "+err.Error())
}
