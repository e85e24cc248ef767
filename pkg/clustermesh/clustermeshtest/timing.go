package clustermeshtest

import (
	"strings"
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
}

// LogWriter sends log lines to tb.Log, so they show only for failing tests.
type LogWriter struct{ TB testing.TB }

func (w LogWriter) Write(b []byte) (int, error) {
	w.TB.Helper()
	w.TB.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
