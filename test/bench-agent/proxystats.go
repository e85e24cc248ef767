package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podmesh/podmesh/pkg/clustermesh"
)

// gauge is a count of open things with the most open at once since the
// last reset, and how many were ever opened.
type gauge struct {
	open, peak, total atomic.Int64
	// base is total at the last reset.
	base atomic.Int64
}

func (g *gauge) inc() {
	n := g.open.Add(1)
	g.total.Add(1)
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
}

func (g *gauge) dec() { g.open.Add(-1) }

// reset starts a new peak from what is open now.
func (g *gauge) reset() {
	g.peak.Store(g.open.Load())
	g.base.Store(g.total.Load())
}

func (g *gauge) String() string {
	total := g.total.Load()
	return fmt.Sprintf("%d open (peak %d; %d opened since, %d in all)", g.open.Load(), g.peak.Load(), total-g.base.Load(), total)
}

// proxyLoad counts what one clustermesh-apiserver proxy serves: the TLS
// connections its clients hold (its listener) and the watches it holds on
// its etcd on their behalf (its client's Watcher, which etcd's watch proxy
// uses for every client watch it does not coalesce onto another of the same
// range, and for its own leader watch). Client watches themselves are not
// visible from outside the proxy (etcd's coalescing gauge does not count
// them: it goes negative).
type proxyLoad struct {
	conns, watches gauge
}

// listen returns a loopback listener whose connections p counts; the proxy
// serves it (proxy.Config.Listener).
func (p *proxyLoad) listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &countingListener{Listener: ln, g: &p.conns}, nil
}

// countWatches makes cli count its watches in p; cli is the proxy's etcd
// client, set up before the proxy starts.
func (p *proxyLoad) countWatches(cli *clientv3.Client) {
	cli.Watcher = &countingWatcher{Watcher: cli.Watcher, g: &p.watches}
}

func (p *proxyLoad) reset() {
	p.conns.reset()
	p.watches.reset()
}

type countingListener struct {
	net.Listener
	g *gauge
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.g.inc()
	return &countedConn{Conn: c, g: l.g}, nil
}

type countedConn struct {
	net.Conn
	g    *gauge
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(c.g.dec)
	return c.Conn.Close()
}

// countingWatcher counts a watch as open from Watch until its channel
// closes.
type countingWatcher struct {
	clientv3.Watcher
	g *gauge
}

func (w *countingWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	up := w.Watcher.Watch(ctx, key, opts...)
	w.g.inc()
	out := make(chan clientv3.WatchResponse)
	go func() {
		defer close(out)
		defer w.g.dec()
		for r := range up {
			select {
			case out <- r:
			case <-ctx.Done():
				for range up { // the watcher closes it once ctx is done
				}
				return
			}
		}
	}()
	return out
}

// etcdMetrics reads the gauges of an etcd's /metrics (Prometheus text).
func etcdMetrics(ctx context.Context, cli *http.Client, url string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read %s: %s", url, resp.Status)
	}
	return parseGauges(string(b), names...), nil
}

// parseGauges returns the values of the unlabelled samples named names in
// a Prometheus text exposition; a name without a sample is left out.
func parseGauges(text string, names ...string) map[string]float64 {
	out := make(map[string]float64)
	for _, l := range strings.Split(text, "\n") {
		name, val, ok := strings.Cut(l, " ")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out
}

// processGauge reads an unlabelled gauge of this process's default
// Prometheus registry (etcd's packages register theirs there).
func processGauge(name string) (float64, bool) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// Metric names read below.
const (
	etcdWatchers     = "etcd_debugging_mvcc_watcher_total"
	etcdWatchStreams = "etcd_debugging_mvcc_watch_stream_total"
)

// sessionFailures sums the failures of a mesh's remote sessions (a cache
// agent's one session is repeated per remote: the largest is its count) and
// counts the remotes with any and the remotes not ready.
func sessionFailures(st clustermesh.Status) (sum, largest uint64, failing, notReady int) {
	for _, rs := range st.Remotes {
		sum += rs.Failures
		largest = max(largest, rs.Failures)
		if rs.Failures > 0 {
			failing++
		}
		if !rs.Ready {
			notReady++
		}
	}
	return sum, largest, failing, notReady
}

// reportLoad prints the connections and watches at both proxies and the
// cache's remote-session failures, as of now, with the peaks since the
// proxies' last reset.
func reportLoad(ctx context.Context, phase string, e *env, r *replica) {
	fmt.Printf("%s:\n", phase)
	fmt.Printf("  remote proxy (serves all mock remotes): TLS connections %s; watches it holds on the remotes' etcd %s", &e.remoteLoad.conns, &e.remoteLoad.watches)
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if m, err := etcdMetrics(mctx, e.metricsClient, e.endpoint+"/metrics", etcdWatchers, etcdWatchStreams); err != nil {
		fmt.Printf("; the remotes' etcd: %v\n", err)
	} else {
		fmt.Printf("; the remotes' etcd counts %.0f watchers on %.0f watch streams\n", m[etcdWatchers], m[etcdWatchStreams])
	}
	fmt.Printf("  cache proxy (serves the local agents): TLS connections %s; watches it holds on the cache's etcd %s", &r.load.conns, &r.load.watches)
	if v, ok := processGauge(etcdWatchers); ok {
		fmt.Printf("; the cache's embedded etcd counts %.0f watchers (its own writer's included)", v)
	}
	fmt.Println()
	st := r.cache.Status()
	sum, _, failing, notReady := sessionFailures(st)
	fmt.Printf("  cache's remote sessions: %d failures recorded (a session ended, or a liveness read unanswered for the first time in a row) over %d of %d remotes; %d remotes not ready now; reconnections = TLS connections opened at the remote proxy since: %d\n",
		sum, failing, len(st.Remotes), notReady, e.remoteLoad.conns.total.Load()-e.remoteLoad.conns.base.Load())
}
