package soak

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/podmesh/podmesh/test/lab"
)

// supervisor restarts a control plane's kube-controller-manager and
// kube-scheduler when they exit — they do when they cannot renew their
// leader lease while the kube-apiserver or etcd is down, and in a real
// cluster the kubelet restarts them as static pods; the lab has nobody
// else to do it. Every restart is reported.
type supervisor struct {
	l      *lab.Lab
	cancel context.CancelFunc
	done   chan struct{}

	// mu protects respawns.
	mu       sync.Mutex
	respawns []string
}

func startSupervisor(ctx context.Context, l *lab.Lab) (*supervisor, error) {
	var procs []lab.Process
	for _, c := range l.Clusters() {
		for _, name := range []string{lab.ProcControllerManager, lab.ProcScheduler} {
			p, err := l.Process(c, nil, name)
			if err != nil {
				return nil, err
			}
			procs = append(procs, p)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &supervisor{l: l, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for sleepCtx(ctx, time.Second) == nil {
			for k, p := range procs {
				if p.Alive() {
					continue
				}
				np, err := l.Respawn(p)
				s.mu.Lock()
				if err != nil {
					s.respawns = append(s.respawns, fmt.Sprintf("%s %s in %s (pid %d) exited; restart failed: %v", time.Now().Format("15:04:05.000"), p.Name, p.NetNS, p.PID, err))
				} else {
					s.respawns = append(s.respawns, fmt.Sprintf("%s %s in %s (pid %d) exited; restarted as pid %d", time.Now().Format("15:04:05.000"), p.Name, p.NetNS, p.PID, np.PID))
					procs[k] = np
				}
				s.mu.Unlock()
			}
		}
	}()
	return s, nil
}

func (s *supervisor) stop() []string {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.respawns
}
