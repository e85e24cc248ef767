package importer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// errRefused marks a cluster whose own config cannot be accepted: its
// imports are withdrawn until it changes.
var errRefused = errors.New("refused")

// errConfigChanged ends a session whose cluster rewrote its config.
var errConfigChanged = errors.New("cluster config changed")

// entry is one service key as the session last read it.
type entry struct {
	export  *Export
	invalid string // why the entry or some of its endpoints were refused
	reason  string // metric label of invalid
}

// source keeps one cluster's services: a loop of sessions (connect, read
// and check the cluster config, wait for the services canary, list and
// watch the cluster's service entries) with backoff in between. Between
// sessions the cluster's last published state stays (an unreachable control
// plane is not a withdrawal); only the importer withdraws it, when the
// cluster's file goes or its config is refused.
type source struct {
	imp   *Importer
	name  string
	local bool
	gen   uint64
	hash  [32]byte
	// dial returns the client of one session and how to close it.
	dial   func() (kvstore.KV, func(), error)
	cancel context.CancelFunc
	done   chan struct{}
	log    logrus.FieldLogger
}

func (s *source) run(ctx context.Context) {
	defer close(s.done)
	t := s.imp.opts.Timing
	bo := kvstore.Backoff{Min: t.BackoffMin, Max: t.BackoffMax}
	for {
		established, err := s.session(ctx)
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
		s.imp.sessionEnded(s.name, s.gen, err)
		s.log.WithError(err).WithField("retry_in", delay.Round(time.Millisecond).String()).Warn("Service import session ended; keeping the cluster's last known services")
		if kvstore.Sleep(ctx, delay) != nil {
			return
		}
	}
}

// session is one connection. It returns whether it published a complete
// listing, and why it ended.
func (s *source) session(ctx context.Context) (established bool, err error) {
	t := s.imp.opts.Timing
	kv, closeKV, err := s.dial()
	if err != nil {
		return false, err
	}
	defer closeKV()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lost := kvstore.ConnectionLost(sctx, kv)
	done := make(chan struct{})
	defer func() { cancel(nil); <-done }()

	cc, rev, err := s.readClusterConfig(sctx, kv)
	if errors.Is(err, errRefused) {
		s.imp.refuse(s.name, s.gen, err)
	}
	if err != nil {
		close(done)
		return false, err
	}
	s.imp.connected(s.name, s.gen, cc)

	probes := make(chan struct{}, 2)
	go func() {
		defer func() { probes <- struct{}{} }()
		s.probe(sctx, cancel, kv, lost)
	}()
	go func() {
		defer func() { probes <- struct{}{} }()
		s.watchClusterConfig(sctx, cancel, kv, rev)
	}()
	go func() { <-probes; <-probes; close(done) }()

	if !cc.Capabilities.ServiceExports {
		// A format-1 cluster publishes every Service, exported or not:
		// importing them would leak what its owners never exported.
		s.imp.publish(s.name, s.gen, nil, nil, noteFormat1)
		<-sctx.Done()
		return true, sessionErr(sctx)
	}

	if err := s.waitCanary(sctx, kv); err != nil {
		return false, sessionErr2(sctx, err)
	}

	events := make(chan kvstore.Event, 1024)
	lw := &kvstore.ListWatcher{Client: kv, Prefix: meshapi.ServicesClusterPrefix(s.name), Backoff: kvstore.Backoff{Min: t.BackoffMin, Max: t.BackoffMax}, Log: s.log}
	lwDone := make(chan struct{})
	go func() {
		defer close(lwDone)
		_ = lw.Run(sctx, func(ev kvstore.Event) {
			select {
			case events <- ev:
			case <-sctx.Done():
			}
		})
	}()
	defer func() { cancel(nil); <-lwDone }()

	entries := make(map[Key]*entry)
	listed := false
	for {
		select {
		case <-sctx.Done():
			return established, sessionErr(sctx)
		case ev := <-events:
			listed = s.apply(entries, cc, ev) || listed
		drain:
			for range cap(events) {
				select {
				case ev := <-events:
					listed = s.apply(entries, cc, ev) || listed
				default:
					break drain
				}
			}
		}
		if !listed {
			continue
		}
		s.imp.publish(s.name, s.gen, maps.Clone(entries), cc, "")
		if !established {
			established = true
			s.log.WithField("services", len(entries)).Info("Cluster's exported services listed")
		}
	}
}

// apply folds one event into entries and reports whether it was a listing.
func (s *source) apply(entries map[Key]*entry, cc *meshapi.ClusterConfig, ev kvstore.Event) bool {
	if ev.Kind == kvstore.Listed {
		return true
	}
	s.imp.applyEvent(s.name, entries, cc, ev)
	return false
}

// applyEvent folds one upsert or delete of cluster's service key into
// entries, validating the value against the cluster's config cc.
func (imp *Importer) applyEvent(cluster string, entries map[Key]*entry, cc *meshapi.ClusterConfig, ev kvstore.Event) {
	parts, err := meshapi.ParseServiceKey(ev.Key)
	if err != nil {
		if ev.Kind == kvstore.Upsert {
			imp.countInvalid(cluster, clustermesh.InvalidReason(err), ev.Key, err)
		}
		return
	}
	k := Key{parts.Namespace, parts.Name}
	if ev.Kind == kvstore.Delete {
		delete(entries, k)
		return
	}
	svc, err := meshapi.DecodeService(ev.Value)
	var e *Export
	var dropped []droppedEndpoint
	if err == nil {
		e, dropped, err = ExportFrom(parts, svc, cc)
	}
	if err != nil {
		// What the cluster says now is a lie: withdraw what it said before.
		reason := clustermesh.InvalidReason(err)
		entries[k] = &entry{invalid: err.Error(), reason: reason}
		imp.countInvalid(cluster, reason, ev.Key, err)
		return
	}
	en := &entry{export: e}
	for _, d := range dropped {
		imp.countInvalid(cluster, d.Reason, ev.Key, d.Err)
		en.invalid, en.reason = d.Err.Error(), d.Reason
	}
	entries[k] = en
}

func (s *source) readClusterConfig(ctx context.Context, kv kvstore.KV) (*meshapi.ClusterConfig, int64, error) {
	cctx, cancel := context.WithTimeout(ctx, s.imp.opts.Timing.ProbeTimeout)
	defer cancel()
	resp, err := kv.Get(cctx, meshapi.ClusterConfigKey(s.name))
	if err != nil {
		return nil, 0, fmt.Errorf("unreachable: read cluster config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, fmt.Errorf("no cluster config published at %s", meshapi.ClusterConfigKey(s.name))
	}
	cc, err := meshapi.DecodeClusterConfig(resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: invalid cluster config: %w", errRefused, err)
	}
	if cc.Name != s.name {
		return nil, 0, fmt.Errorf("%w: %w: cluster config at %s names cluster %s", errRefused, meshapi.ErrMismatch, meshapi.ClusterConfigKey(s.name), cc.Name)
	}
	if s.local {
		if cc.ID != s.imp.opts.LocalClusterID {
			return nil, 0, fmt.Errorf("%w: %w: local cluster config has ID %d, --cluster-id is %d", errRefused, meshapi.ErrMismatch, cc.ID, s.imp.opts.LocalClusterID)
		}
	} else if err := s.imp.registry.Admit(cc); err != nil {
		return nil, 0, fmt.Errorf("%w: %w", errRefused, err)
	}
	return cc, resp.Header.Revision, nil
}

// waitCanary returns once the cluster's services canary exists: its
// apiserver has written its first full listing.
func (s *source) waitCanary(ctx context.Context, kv kvstore.KV) error {
	key := meshapi.SyncedKey(s.name, meshapi.KindServices)
	gctx, gcancel := context.WithTimeout(ctx, s.imp.opts.Timing.ProbeTimeout)
	resp, err := kv.Get(gctx, key)
	gcancel()
	if err != nil {
		return fmt.Errorf("unreachable: read services canary: %w", err)
	}
	if len(resp.Kvs) > 0 {
		return nil
	}
	s.imp.setPhase(s.name, s.gen, "waiting for the services sync canary")
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	for wr := range kv.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
		if wr.Err() != nil {
			return fmt.Errorf("watch services canary: %w", wr.Err())
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypePut {
				return nil
			}
		}
	}
	return fmt.Errorf("watch services canary: %w", errors.Join(ctx.Err(), errors.New("watch closed")))
}

// probe reads the heartbeat every ProbeInterval; a failed read ends the
// session (the state stays), a successful one says the data is current. A
// broken connection (lost) ends the session at once: the server the client
// would reconnect to may be a rebuilt etcd whose history is not the one the
// watch would resume, so the next session lists again.
func (s *source) probe(ctx context.Context, cancel context.CancelCauseFunc, kv kvstore.KV, lost <-chan struct{}) {
	t := s.imp.opts.Timing
	ticker := time.NewTicker(t.ProbeInterval)
	defer ticker.Stop()
	for {
		pctx, pcancel := context.WithTimeout(ctx, t.ProbeTimeout)
		_, err := kv.Get(pctx, meshapi.HeartbeatKey(s.name))
		pcancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			cancel(fmt.Errorf("unreachable: read heartbeat: %w", err))
			return
		}
		s.imp.contact(s.name, s.gen)
		select {
		case <-ctx.Done():
			return
		case <-lost:
			cancel(kvstore.ErrConnectionLost)
			return
		case <-ticker.C:
		}
	}
}

func (s *source) watchClusterConfig(ctx context.Context, cancel context.CancelCauseFunc, kv kvstore.KV, rev int64) {
	for resp := range kv.Watch(ctx, meshapi.ClusterConfigKey(s.name), clientv3.WithRev(rev+1)) {
		if resp.Err() != nil {
			cancel(fmt.Errorf("watch cluster config: %w", resp.Err()))
			return
		}
		if len(resp.Events) > 0 {
			cancel(errConfigChanged)
			return
		}
	}
}

func sessionErr(sctx context.Context) error { return sessionErr2(sctx, errors.New("session ended")) }

// sessionErr2 prefers the cause a session was cancelled with.
func sessionErr2(sctx context.Context, err error) error {
	if cause := context.Cause(sctx); cause != nil && sctx.Err() != nil {
		return cause
	}
	return err
}
