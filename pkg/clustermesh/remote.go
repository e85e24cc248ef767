package clustermesh

import (
	"context"
	"errors"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/pkg/kvstore"
)

// errRefused marks a remote whose own cluster config cannot be accepted: its
// entries are withdrawn and its claim released until it changes.
var errRefused = errors.New("refused")

// errConfigChanged ends a session whose remote rewrote its cluster config,
// so the next session validates and admits it again.
var errConfigChanged = errors.New("remote cluster config changed")

// remote is one remote cluster named by a file in the config directory, as
// the Mesh keeps it: its status record and the generation running now.
// Each version of the file runs as one generation: a goroutine that opens
// sessions one after the other, with backoff between them. A newer
// generation (file changed) or removal makes the older one's writes no-ops
// (Mesh.push and record.update check the generation).
type remote struct {
	name string
	log  logrus.FieldLogger
	rec  *record

	// Mesh.mu protects the fields below.
	cancel context.CancelFunc
	hash   [32]byte
	// evict ends the admitted session of the current generation, when the
	// registry displaces the cluster; nil while none is admitted.
	evict func(error)
}

func newRemote(m *Mesh, name string) *remote {
	return &remote{
		name: name,
		log:  m.log.WithField("cluster", name),
		rec:  newRecord(name, m.opts.Timing.HeartbeatStaleAfter, m.now),
	}
}

// startLocked begins a new generation for file f, stopping the previous one.
func (m *Mesh) startLocked(ctx context.Context, r *remote, f RemoteFile) {
	m.stopLocked(r)
	gen := r.rec.nextGeneration()
	r.hash = f.Hash
	if f.Err != nil {
		r.rec.update(gen, func() {
			r.rec.phase = "config error: " + f.Err.Error()
			r.rec.recordErrorLocked(f.Err)
		})
		r.log.WithError(f.Err).Warn("Remote cluster file unusable; keeping its last known state")
		return
	}
	r.rec.update(gen, func() { r.rec.phase = "connecting" })
	ctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	m.wg.Go(func() {
		defer cancel()
		m.runRemote(ctx, r, gen, f.Config)
	})
}

// stopLocked ends the running generation, if any.
func (m *Mesh) stopLocked(r *remote) {
	r.rec.nextGeneration()
	r.evict = nil
	if r.cancel != nil {
		r.cancel()
		r.cancel = nil
	}
}

// runRemote keeps one generation connected until ctx is done: it opens a
// session, waits for it to end, and opens the next after a backoff (or at
// once when the registry says a refusal may no longer hold).
func (m *Mesh) runRemote(ctx context.Context, r *remote, gen uint64, cfg *kvstore.Config) {
	kvstore.CheckKeyMode(cfg.KeyFile, r.log)
	t := m.opts.Timing
	bo := kvstore.NewBackoff(t.BackoffMin, t.BackoffMax)
	for {
		var established bool
		var wake <-chan struct{}
		s, err := openSession(ctx, m, r, gen, cfg)
		if err == nil {
			<-s.Done()
			established, wake, err = s.Established(), s.Wake(), s.Err()
		} else {
			m.presented(r.name) // no config to present this time
		}
		if ctx.Err() != nil {
			return
		}
		if established {
			bo = kvstore.NewBackoff(t.BackoffMin, t.BackoffMax)
		}
		delay := bo.Step()
		changed := errors.Is(err, errConfigChanged)
		if changed {
			delay = 0
		}
		r.rec.update(gen, func() {
			r.rec.up = false
			r.rec.probeErr = ""
			r.rec.phase = err.Error()
			if !changed { // a re-read, not a failure
				r.rec.recordErrorLocked(err)
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
