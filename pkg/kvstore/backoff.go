package kvstore

import (
	"context"
	"math"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// NewBackoff returns the reconnect pacing every podmesh retry loop uses:
// apimachinery's wait.Backoff, doubling from min up to max, each delay
// lengthened by a random 0..50%, so a thousand agents that lose the same
// proxy at the same moment spread their reconnects instead of arriving in
// lock-step. Zero bounds take 200ms and 30s. A wait.Backoff is a value:
// each retry loop owns a copy and resets it by assigning a fresh one.
func NewBackoff(min, max time.Duration) wait.Backoff {
	if min <= 0 {
		min = 200 * time.Millisecond
	}
	if max <= 0 {
		max = 30 * time.Second
	}
	return wait.Backoff{Duration: min, Factor: 2, Jitter: 0.5, Steps: math.MaxInt32, Cap: max}
}

// Backoff is NewBackoff in the Next/Reset form some retry loops are written
// in: Min and Max configure it, the stepping is the wait.Backoff's. The zero
// value uses 200ms..30s. It is not safe for concurrent use; each retry loop
// owns one.
type Backoff struct {
	Min, Max time.Duration
	// cur is the wait.Backoff being stepped; nil until Next, and after Reset.
	cur *wait.Backoff
}

// Next returns the delay before the next attempt and advances.
func (b *Backoff) Next() time.Duration {
	if b.cur == nil {
		w := NewBackoff(b.Min, b.Max)
		b.cur = &w
	}
	return b.cur.Step()
}

// Reset starts over at Min after a success.
func (b *Backoff) Reset() { b.cur = nil }

// Sleep waits for d or until ctx is done, whichever is first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
