package clustermesh

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/connectivity"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// probe is the session's liveness check. It reads the heartbeat key every
// ProbeInterval, each read bounded by ProbeTimeout. A read that fails while
// nothing else (listing pages, watch events) has been heard from the remote
// for ProbeTimeout marks it not ready at once ("unreachable"), and the next
// read that succeeds makes it ready again; only when nothing has been heard
// for RequestTimeout does the session end and reconnect. Its entries stay in
// every case. A dead or cut remote is therefore reported within
// ProbeInterval + ProbeTimeout:
//
//   - a remote whose process died or whose connection was reset: the gRPC
//     connection leaves READY at once, which triggers a read without
//     waiting for the next tick; the read cannot complete before the
//     client reconnects, so it fails after ProbeTimeout;
//   - a path that silently drops packets: the next read times out.
//
// A slow but live remote, or a busy local machine, only has to answer one
// small Range within ProbeTimeout to stay ready, and a late answer costs a
// moment of not-ready, never a reconnect and re-list. The freshness of the
// heartbeat's value is judged separately and far more leniently
// (HeartbeatStaleAfter).
func (s *session) probe() {
	t := s.mesh.opts.Timing
	kick := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.watchConnectivity(kick) })
	ticker := time.NewTicker(t.ProbeInterval)
	defer ticker.Stop()
	s.alive()
	for {
		pctx, pcancel := context.WithTimeout(s.ctx, t.ProbeTimeout)
		resp, err := s.cli.Get(pctx, meshapi.HeartbeatKey(s.r.name))
		pcancel()
		if s.ctx.Err() != nil {
			return
		}
		switch silent := s.silentFor(); {
		case err == nil:
			s.alive()
			s.heard(resp.Kvs)
		case silent < t.ProbeTimeout:
			// The read was slow, but the remote is streaming list or
			// watch responses: it is alive, only busy.
		case silent >= t.RequestTimeout:
			s.cancel(fmt.Errorf("unreachable: nothing heard for %s: %w", silent.Round(time.Millisecond), err))
			return
		default:
			s.unanswered(fmt.Errorf("unreachable: no answer to the liveness read within %s: %w", t.ProbeTimeout, err))
		}
		select {
		case <-s.ctx.Done():
			return
		case <-ticker.C:
		case <-kick:
		}
	}
}

// alive records that the remote answered just now (a liveness read, a
// listing page or a watch event).
func (s *session) alive() { s.lastHeard.Store(time.Now().UnixNano()) }

// silentFor is how long nothing has been heard from the remote.
func (s *session) silentFor() time.Duration {
	return time.Since(time.Unix(0, s.lastHeard.Load()))
}

// unanswered marks the remote not ready after a failed liveness read.
func (s *session) unanswered(err error) {
	rec := s.r.rec
	first := false
	rec.update(s.gen, func() {
		if rec.probeErr == "" {
			first = true
			rec.recordErrorLocked(err)
		}
		rec.probeErr = err.Error()
	})
	if first {
		s.log.WithError(err).Warn("Remote cluster not answering; reporting it not ready and keeping its state")
	}
}

// heard records a liveness answer: the remote is reachable, and its
// heartbeat value is what kvs holds.
func (s *session) heard(kvs []*mvccpb.KeyValue) {
	rec := s.r.rec
	var hb time.Time
	var hbErr string
	if len(kvs) > 0 {
		var err error
		if hb, err = meshapi.ParseTime(kvs[0].Value); err != nil {
			hbErr = "invalid heartbeat: " + err.Error()
		}
	}
	rec.update(s.gen, func() {
		if rec.probeErr != "" {
			s.log.Info("Remote cluster answering again")
		}
		rec.probeErr = ""
		if !rec.heartbeat.IsZero() && !hb.Equal(rec.heartbeat) {
			rec.hbChanged = rec.now()
		}
		rec.heartbeat, rec.hbErr = hb, hbErr
	})
}

// watchConnectivity signals kick whenever the client's connection leaves
// READY, until the session ends.
func (s *session) watchConnectivity(kick chan<- struct{}) {
	conn := s.cli.ActiveConnection()
	if conn == nil {
		return
	}
	st := conn.GetState()
	for conn.WaitForStateChange(s.ctx, st) {
		st = conn.GetState()
		if st == connectivity.Ready {
			continue
		}
		select {
		case kick <- struct{}{}:
		default:
		}
	}
}
