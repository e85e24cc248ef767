package clustermesh

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// probe is the session's liveness check. It reads the heartbeat key every
// ProbeInterval, each read bounded by ProbeTimeout, and ends the session
// when a read fails: the remote is then reported not ready (its entries
// stay). It does not wait for the heartbeat to go stale, so a dead or cut
// remote is noticed within ProbeInterval + ProbeTimeout:
//
//   - a remote whose process died or whose connection was reset: the gRPC
//     connection leaves READY at once, which triggers a read without
//     waiting for the next tick; the read cannot complete before the
//     client reconnects, so it fails after ProbeTimeout;
//   - a path that silently drops packets: the next read times out.
//
// A slow but live remote (a busy machine) only needs to answer one small
// Range within ProbeTimeout; the freshness of the heartbeat's value is
// judged separately and far more leniently (HeartbeatStaleAfter).
func (s *session) probe() {
	t := s.mesh.opts.Timing
	rec := s.r.rec
	kick := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.watchConnectivity(kick) })
	ticker := time.NewTicker(t.ProbeInterval)
	defer ticker.Stop()
	for {
		pctx, pcancel := context.WithTimeout(s.ctx, t.ProbeTimeout)
		resp, err := s.cli.Get(pctx, meshapi.HeartbeatKey(s.r.name))
		pcancel()
		if s.ctx.Err() != nil {
			return
		}
		if err != nil {
			s.cancel(fmt.Errorf("unreachable: no answer to the liveness read within %s: %w", t.ProbeTimeout, err))
			return
		}
		var hb time.Time
		var hbErr string
		if len(resp.Kvs) > 0 {
			if hb, err = meshapi.ParseTime(resp.Kvs[0].Value); err != nil {
				hbErr = "invalid heartbeat: " + err.Error()
			}
		}
		rec.update(s.gen, func() {
			if !rec.heartbeat.IsZero() && !hb.Equal(rec.heartbeat) {
				rec.hbChanged = rec.now()
			}
			rec.heartbeat, rec.hbErr = hb, hbErr
		})
		select {
		case <-s.ctx.Done():
			return
		case <-ticker.C:
		case <-kick:
		}
	}
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
