package kubesync

import (
	"sync"
	"testing"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Batch writers call checkConvergence concurrently once every kind is
// written. Ready must be closed exactly once: a double close panics and took
// the whole clustermesh-apiserver down under load.
func TestReadyClosesOnceUnderConcurrentConvergenceChecks(t *testing.T) {
	// Info level (to nowhere) keeps the log call between the check and the
	// close, as in the real server; it widens the window the race needs.
	s := newIdleSyncer(t)
	s.mu.Lock()
	for _, kind := range meshapi.SyncedKinds {
		s.listed[kind] = true
		s.canaried[kind] = true
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 64 {
		wg.Go(func() {
			<-start
			s.checkConvergence()
		})
	}
	close(start)
	wg.Wait()
	select {
	case <-s.Ready():
	default:
		t.Fatal("Ready is not closed although every kind is written")
	}
}
