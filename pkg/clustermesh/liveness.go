package clustermesh

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// probe is the session's liveness check. It reads the heartbeat key every
// ProbeInterval, one read at a time. A read unanswered after ProbeTimeout,
// while nothing else (listing pages, watch events) has been heard from the
// remote for as long, marks it not ready at once ("unreachable"); the read
// that is answered next makes it ready again. Only a read unanswered for
// RequestTimeout, with nothing heard meanwhile, ends the session (as a
// single failed read did before). Its entries stay in every case. A dead or
// cut remote is therefore reported within ProbeInterval + ProbeTimeout:
//
//   - a remote whose process died or whose connection was reset: the gRPC
//     connection leaves READY, which ends the session at once
//     (watchConnection): the server that answers after the client
//     reconnects may be a rebuilt etcd with another history, so the next
//     session lists again instead of resuming;
//   - a path that silently drops packets: the next read is unanswered.
//
// A slow but live remote, or a busy local machine, only has to answer one
// small Range within ProbeTimeout to stay ready; a late answer costs a
// moment of not-ready, never a reconnect and re-list, and an overloaded
// remote is never sent more than one read at a time. The freshness of the
// heartbeat's value is judged separately and far more leniently
// (HeartbeatStaleAfter).
func (s *session) probe() {
	t := s.mesh.opts.Timing
	ticker := time.NewTicker(t.ProbeInterval)
	defer ticker.Stop()
	s.alive()
	for {
		resp, err := s.livenessRead()
		if s.ctx.Err() != nil {
			return
		}
		if err == nil {
			s.alive()
			s.heard(resp.Kvs)
		} else if silent := s.silentFor(); silent >= t.RequestTimeout {
			s.cancel(fmt.Errorf("unreachable: nothing heard for %s: %w", silent.Round(time.Millisecond), err))
			return
		}
		select {
		case <-s.ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// livenessRead reads the heartbeat key, waiting up to RequestTimeout for the
// answer but marking the remote not ready as soon as ProbeTimeout passes
// without it while nothing else was heard either (a slow answer then makes
// it ready again). One read at a time: an overloaded remote is not sent
// more.
func (s *session) livenessRead() (*clientv3.GetResponse, error) {
	t := s.mesh.opts.Timing
	type result struct {
		resp *clientv3.GetResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, t.RequestTimeout)
		defer cancel()
		resp, err := s.cli.Get(ctx, meshapi.HeartbeatKey(s.r.name))
		done <- result{resp, err}
	}()
	timer := time.NewTimer(t.ProbeTimeout)
	defer timer.Stop()
	select {
	case r := <-done:
		return r.resp, r.err
	case <-timer.C:
	}
	if s.silentFor() >= t.ProbeTimeout { // listing or watch traffic would prove it alive
		s.unanswered(fmt.Errorf("unreachable: no answer to the liveness read within %s", t.ProbeTimeout))
	}
	r := <-done
	return r.resp, r.err
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
// watchConnection ends the session when its connection breaks after having
// been ready (kvstore.ConnectionLost); lost was taken when the client was
// created, so no break is missed.
func (s *session) watchConnection(lost <-chan struct{}) {
	select {
	case <-lost:
		s.cancel(kvstore.ErrConnectionLost)
	case <-s.ctx.Done():
	}
}
