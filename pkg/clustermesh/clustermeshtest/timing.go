package clustermeshtest

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podmesh/podmesh/pkg/clustermesh"
)

// FastTiming makes sessions notice failures and retry quickly, for tests.
var FastTiming = clustermesh.Timing{
	ProbeInterval: 100 * time.Millisecond,
	ProbeTimeout:  time.Second,
	DialTimeout:   time.Second,
	BackoffMin:    50 * time.Millisecond,
	BackoffMax:    300 * time.Millisecond,
	// ReconnectWindow spreads a lost cache session's first retry over
	// [0, 300ms).
	ReconnectWindow: 300 * time.Millisecond,
}

// LogWriter sends log lines to tb.Log, so they show only for failing tests.
type LogWriter struct{ TB testing.TB }

func (w LogWriter) Write(b []byte) (int, error) {
	w.TB.Helper()
	w.TB.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// Run runs run in a goroutine until the returned stop is called (tb's
// cleanup calls it too): stop cancels run's context and waits up to within
// for it to return context.Canceled.
func Run(tb testing.TB, run func(context.Context) error, within time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				tb.Errorf("stopped with %v, want context.Canceled", err)
			}
		case <-time.After(within):
			tb.Errorf("did not stop within %s", within)
		}
	})
	tb.Cleanup(stop)
	return stop
}
