package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// churnWriters is how many changes may be in flight at once; churnConns
// how many etcd connections they share.
var churnWriters = flag.Int("churn-writers", 16, "cache: churn writes in flight at once (a late change is written at once, never dropped)")

const churnConns = 2

// churn changes every cluster at Cilium's CI rates: per cluster an endpoint
// rewritten every second and a node every 10 s (1.1 writes/s per cluster).
// Change i is due at start + i/rate and goes to cluster i % clusters (a node
// write when i % 11 == 10). Writers take the next change, wait until it is
// due and write it; a late change is written at once, never skipped, so the
// achieved rate is the target's unless etcd cannot take the writes, and the
// lag behind the schedule says by how much.
type churn struct {
	clis                             []*clientv3.Client
	clusters, nodes, endpoints, bits int
	rate                             float64 // target writes per second

	next   atomic.Int64 // the next change to take
	writes atomic.Int64 // changes written
	start  time.Time
	lagMu  sync.Mutex
	lags   []time.Duration // per change written: how late it was issued
}

// newChurn returns the churn of clusters mock clusters; its writers share
// clis, connections to the mock remotes' etcd.
func newChurn(clis []*clientv3.Client, clusters, nodes, endpoints, nodeBits int) *churn {
	return &churn{clis: clis, clusters: clusters, nodes: nodes, endpoints: endpoints, bits: nodeBits, rate: 1.1 * float64(clusters), start: time.Now()}
}

// run writes until ctx is done; the schedule starts at newChurn.
func (c *churn) run(ctx context.Context) error {
	interval := time.Duration(float64(time.Second) / c.rate)
	var g errgroup.Group
	for w := range *churnWriters {
		cli := c.clis[w%len(c.clis)]
		g.Go(func() error {
			t := time.NewTimer(0)
			defer t.Stop()
			for {
				i := c.next.Add(1) - 1
				due := c.start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					t.Reset(wait)
					select {
					case <-ctx.Done():
						return nil
					case <-t.C:
					}
				} else if ctx.Err() != nil {
					return nil
				}
				late := time.Since(due)
				if err := churnOne(ctx, cli, int(i), c.clusters, c.nodes, c.endpoints, c.bits); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("churn write %d: %w", i, err)
				}
				c.writes.Add(1)
				c.lagMu.Lock()
				c.lags = append(c.lags, late)
				c.lagMu.Unlock()
			}
		})
	}
	return g.Wait()
}

// report says how many changes were written since the start, at what rate
// against the target, and how late they were issued.
func (c *churn) report() string {
	elapsed := time.Since(c.start)
	n := c.writes.Load()
	c.lagMu.Lock()
	lags := append([]time.Duration(nil), c.lags...)
	c.lagMu.Unlock()
	s := fmt.Sprintf("%d churn writes in %s (%d writers): %.1f/s achieved of %.1f/s target (%.1f %%)",
		n, elapsed.Round(time.Millisecond), *churnWriters, float64(n)/elapsed.Seconds(), c.rate, 100*float64(n)/elapsed.Seconds()/c.rate)
	if len(lags) > 0 {
		p50, p99, maxLag := percentiles(lags)
		s += fmt.Sprintf("; issued behind schedule p50 %s, p99 %s, max %s", p50.Round(time.Microsecond), p99.Round(time.Microsecond), maxLag.Round(time.Microsecond))
	}
	return s
}

// percentiles sorts d and returns its p50, p99 and maximum.
func percentiles(d []time.Duration) (p50, p99, maxD time.Duration) {
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(float64(len(d))*q))] }
	return at(0.5), at(0.99), d[len(d)-1]
}

// heartbeat refreshes every named cluster's heartbeat every
// meshapi.HeartbeatInterval, as a live remote's clustermesh-apiserver does
// (a mock published once goes stale, and not ready, after
// meshapi.HeartbeatStaleAfter). The returned func stops it.
func (e *env) heartbeat(ctx context.Context, names []string) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(meshapi.HeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			now := meshapi.FormatTime(time.Now())
			for batch := range slices.Chunk(names, 100) {
				ops := make([]clientv3.Op, 0, len(batch))
				for _, n := range batch {
					ops = append(ops, clientv3.OpPut(meshapi.HeartbeatKey(n), now))
				}
				if _, err := e.admin.Txn(ctx).Then(ops...).Commit(); err != nil && ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "bench-agent: mock heartbeats: %v\n", err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}
