package kvstore

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff computes exponentially growing delays with jitter. The zero value
// uses 200ms..30s, factor 2, jitter 50%: each delay is drawn uniformly from
// [d/2, d], so a thousand agents that lose the same proxy at the same moment
// spread their reconnects over half the delay instead of arriving in
// lock-step, and the spread widens with every attempt. It is not safe for
// concurrent use; each retry loop owns one.
type Backoff struct {
	Min, Max time.Duration
	// Jitter is the fraction (0..1) by which a delay is randomly shortened.
	Jitter  float64
	attempt int
}

// Next returns the delay before the next attempt and advances.
func (b *Backoff) Next() time.Duration {
	lo, hi, jitter := b.Min, b.Max, b.Jitter
	if lo <= 0 {
		lo = 200 * time.Millisecond
	}
	if hi <= 0 {
		hi = 30 * time.Second
	}
	if jitter <= 0 || jitter > 1 {
		jitter = 0.5
	}
	d := lo
	for i := 0; i < b.attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	b.attempt++
	return d - time.Duration(rand.Float64()*jitter*float64(d))
}

// Reset starts over at Min after a success.
func (b *Backoff) Reset() { b.attempt = 0 }

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
