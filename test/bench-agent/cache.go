package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/cache"
	"github.com/podmesh/podmesh/clustermesh-apiserver/etcdserver"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// replica is one clustermesh-apiserver's cache tier in this process: an
// embedded etcd, the cache mirroring every remote of the config directory
// and the cache proxy local agents dial.
type replica struct {
	etcd      *etcdserver.Server
	cache     *cache.Cache
	proxy     *proxy.Proxy
	cacheFile string
	// load counts what the cache proxy serves.
	load proxyLoad
	// etcdReady is when the embedded etcd was up (auth set up); the cache
	// starts then.
	etcdReady time.Time
	stop      func()
}

// startReplica runs the cache of the remotes in dir and writes the local
// agents' etcd-client file for its proxy.
func (e *env) startReplica(ctx context.Context, dir string) (_ *replica, err error) {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	data, err := os.MkdirTemp(e.dir, "replica")
	if err != nil {
		return nil, err
	}
	r := &replica{}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	r.stop = func() {
		if r.proxy != nil {
			r.proxy.Stop()
		}
		cancel()
		if r.cache != nil {
			<-done
		}
		if r.etcd != nil {
			r.etcd.Close()
		}
	}
	defer func() {
		if err != nil {
			r.stop()
		}
	}()
	if r.etcd, err = etcdserver.Start(ctx, etcdserver.Config{DataDir: data, UnsafeNoFsync: true, Log: log, EtcdLog: zap.NewNop()}); err != nil {
		return nil, err
	}
	r.etcdReady = time.Now()
	if r.cache, err = cache.New(cache.Options{
		Cluster: "local", ClusterID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
		ConfigDir: dir, Etcd: r.etcd.Writer, SyncTimeout: 10 * time.Minute, Log: log,
	}); err != nil {
		return nil, err
	}
	srv, err := e.ca.IssueServer(certs.Options{CommonName: "cache", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(e.ca.Cert)
	tlsCfg, err := proxy.ServerTLS(pair, pool, []string{certs.LocalCN("local")})
	if err != nil {
		return nil, err
	}
	r.load.countWatches(r.etcd.CacheReader)
	lis, err := r.load.listen()
	if err != nil {
		return nil, err
	}
	if r.proxy, err = proxy.Start(ctx, proxy.Config{Listener: lis, TLS: tlsCfg, Client: r.etcd.CacheReader, Log: log}); err != nil {
		lis.Close()
		return nil, err
	}
	kp, err := e.ca.IssueClient(certs.Options{CommonName: certs.LocalCN("local")})
	if err != nil {
		return nil, err
	}
	files, err := certs.CacheSecretFiles([]string{"https://" + r.proxy.Addr()}, e.ca.CertPEM, kp.CertPEM, kp.KeyPEM)
	if err != nil {
		return nil, err
	}
	vol := filepath.Join(data, "agent")
	if err := certs.WriteSecretVolume(vol, files); err != nil {
		return nil, err
	}
	r.cacheFile = filepath.Join(vol, certs.CacheConfigKey)
	go func() {
		defer close(done)
		_ = r.cache.Run(ctx)
	}()
	return r, nil
}

// publishAll publishes clusters c0..c<n-1> into the mock remotes' etcd and
// returns their names.
func (e *env) publishAll(ctx context.Context, clusters, nodes, endpoints, nodeBits int) ([]string, error) {
	var names []string
	t0 := time.Now()
	for i := range clusters {
		c := newCluster(i, nodeBits)
		if err := publish(ctx, e.admin, c, nodes, endpoints); err != nil {
			return nil, err
		}
		names = append(names, c.name)
	}
	fmt.Printf("published %d clusters x %d nodes x %d endpoints in %s (one etcd behind the real read-only proxy; a /%d pod CIDR and an IP of its own per node)\n", clusters, nodes, endpoints, time.Since(t0).Round(time.Millisecond), nodeBits)
	return names, nil
}

// cacheBench measures the cache tier: the replica's bootstrap from every
// remote, then an agent (a child process) bootstrapping from the replica,
// then convergence under churn, then a storm of agents restarting at once.
func cacheBench(ctx context.Context, bin string, clusters, nodes, endpoints, storm int, churn time.Duration, kernel bool) error {
	nodeBits, err := nodeBitsFor(nodes, endpoints)
	if err != nil {
		return err
	}
	e, err := startEtcd(ctx, bin)
	if err != nil {
		return err
	}
	defer e.close()
	names, err := e.publishAll(ctx, clusters, nodes, endpoints, nodeBits)
	if err != nil {
		return err
	}
	defer e.heartbeat(ctx, names)()
	stopProxy, err := e.startProxy(ctx)
	if err != nil {
		return err
	}
	defer stopProxy()
	dir, err := e.writeConfigDir(names)
	if err != nil {
		return err
	}

	before := cpuTime()
	t0 := time.Now()
	r, err := e.startReplica(ctx, dir)
	if err != nil {
		return err
	}
	defer r.stop()
	select {
	case <-r.cache.Synced():
	case <-time.After(10 * time.Minute):
		return errors.New("cache not synced after 10 minutes")
	}
	syncedAt := time.Now()
	boot := syncedAt.Sub(t0)
	keys, err := r.etcd.Writer.Get(ctx, meshapi.CacheRoot, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	fmt.Printf("cache bootstrap: %d remotes synced and mirrored in %s after its etcd was up (%s with the embedded etcd's start; CPU %s): %d cache keys (%d remote pods, of which only those outside their node's CIDR are cached)\n",
		clusters, syncedAt.Sub(r.etcdReady).Round(time.Millisecond), boot.Round(time.Millisecond), (cpuTime() - before).Round(time.Millisecond), keys.Count, clusters*endpoints)
	m := measure()
	fmt.Printf("this process (mock remotes' proxy + cache replica): heap in use %s, RSS %s\n", mib(m.heap), mib(m.rss))

	// One agent, as its own process, so its memory is its own.
	var res agentResult
	if err := runChild(ctx, &res, "-mode=cache-agent", "-cache-file="+r.cacheFile); err != nil {
		return err
	}
	fmt.Printf("agent synced from the cache in %s: %d remotes, %d nodes, %d endpoints held, %d desired prefixes; agent process RSS %s, CPU %s, session failures %d\n",
		res.Sync.Round(time.Millisecond), res.Remotes, res.Nodes, res.Endpoints, res.Prefixes, mib(res.RSS), res.CPU.Round(time.Millisecond), res.Reconnects)

	if churn > 0 {
		if err := cacheConvergence(ctx, e, r, clusters, nodes, endpoints, nodeBits, churn, kernel); err != nil {
			return err
		}
	}
	if storm > 0 {
		e.remoteLoad.reset()
		r.load.reset()
		if err := cacheStorm(ctx, r, storm); err != nil {
			return err
		}
		reportLoad(ctx, "proxies after the storm (peaks: during the storm)", e, r)
	}
	return nil
}

// agentResult is what the cache-agent child reports.
type agentResult struct {
	Sync                                time.Duration
	Remotes, Nodes, Endpoints, Prefixes int
	RSS                                 int64
	CPU                                 time.Duration
	Reconnects                          uint64
}

// cacheAgent runs one cache-mode agent (CacheMesh and a desired set, what
// podmesh-agent runs but the kernel) until it synced, and prints its result.
func cacheAgent(ctx context.Context, file string) error {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	desired := datapath.NewDesired()
	t0 := time.Now()
	m, err := clustermesh.NewCache(clustermesh.Options{
		LocalCluster: "local", LocalClusterID: 1, LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
		LocalTunnelIP: netip.MustParseAddr("172.31.0.1"), CacheFile: file, Desired: desired, SyncTimeout: time.Hour, Log: log,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-m.Synced():
	case <-time.After(5 * time.Minute):
		return errors.New("agent not synced from the cache after 5 minutes")
	}
	res := agentResult{Sync: time.Since(t0)}
	st := m.Status()
	for _, rs := range st.Remotes {
		res.Remotes++
		res.Nodes += rs.Nodes
		res.Endpoints += rs.Endpoints
		res.Prefixes += rs.Prefixes
		res.Reconnects = max(res.Reconnects, rs.Failures) // the cache session's, repeated per remote
	}
	res.RSS = measure().rss
	res.CPU = cpuTime()
	return json.NewEncoder(os.Stdout).Encode(res)
}

// runChild runs this program with args and decodes its JSON result.
func runChild(ctx context.Context, out any, args ...string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s %v: %w", self, args, err)
	}
	return json.Unmarshal(b, out)
}

// cacheConvergence writes a change to one mock remote at a time (an
// endpoint outside its node's CIDR, added then deleted) while every cluster
// churns (churn.go), and measures write -> agent desired set through the
// cache, and with kernel on to the agent's ebpf datapath (kernel.go).
func cacheConvergence(ctx context.Context, e *env, r *replica, clusters, nodes, endpoints, nodeBits int, d time.Duration, kernel bool) error {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	w := &watcher{Desired: datapath.NewDesired()}
	m, err := clustermesh.NewCache(clustermesh.Options{
		LocalCluster: "local", LocalClusterID: 1, LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
		LocalTunnelIP: netip.MustParseAddr("172.31.0.1"), CacheFile: r.cacheFile, Desired: w, SyncTimeout: time.Hour, Log: log,
	})
	if err != nil {
		return err
	}
	admin, err := e.clientConfig("churn")
	if err != nil {
		return err
	}
	var clis []*clientv3.Client
	defer func() {
		for _, c := range clis {
			c.Close()
		}
	}()
	for range churnConns + 1 { // the probe's, then the churn writers'
		cli, err := kvstore.NewClient(admin, kvstore.ClientOptions{})
		if err != nil {
			return err
		}
		clis = append(clis, cli)
	}
	cli := clis[0]
	ctx, cancel := context.WithCancel(ctx)
	var g errgroup.Group
	defer func() { cancel(); g.Wait() }() // also on an error: the agent and the churn stop with ctx
	g.Go(func() error { return m.Run(ctx) })
	select {
	case <-m.Synced():
	case <-time.After(5 * time.Minute):
		return errors.New("convergence agent not synced")
	}
	c := newCluster(0, nodeBits)
	probe := func(i int) netip.Addr { return c.uncovered(endpoints + i/2) } // beyond the published endpoints' and the churn's
	var k *kernelDatapath
	if kernel {
		t0 := time.Now()
		if k, err = startKernel(ctx, w.Desired, e.close); err != nil { // on a signal, the mock etcd goes too
			return err
		}
		defer k.close()
		if err := k.checkLayout(datapath.Entry{Prefix: c.nodeCIDR(0), TunnelEndpoint: c.nodeIP(0), ClusterID: c.id}, meshapi.HostPrefix(probe(0))); err != nil {
			return err
		}
		fmt.Printf("ebpf datapath (own network namespace and bpffs directory) programmed the agent's %d prefixes in %s\n", k.programmed(), time.Since(t0).Round(time.Millisecond))
	}
	ch := newChurn(clis[1:], clusters, nodes, endpoints, nodeBits)
	e.remoteLoad.reset()
	r.load.reset()
	g.Go(func() error { return ch.run(ctx) })

	var lat, klat []time.Duration
	deadline := time.Now().Add(d)
	for i := 0; time.Now().Before(deadline); i++ {
		if endpoints+i/2 >= maxUncovered {
			return fmt.Errorf("change %d: out of probe addresses (%d endpoints per cluster)", i, endpoints)
		}
		ip := probe(i)
		name := "latency-" + strconv.Itoa(i/2)
		present := i%2 == 0
		hit := w.expect(meshapi.HostPrefix(ip), present)
		t0 := time.Now()
		if present {
			b, _ := meshapi.Encode(meshapi.Endpoint{Cluster: c.name, ClusterID: c.id, Namespace: "bench", Name: name, Node: nodeName(i % nodes), IPs: []netip.Addr{ip}})
			_, err = cli.Put(ctx, meshapi.EndpointKey(c.name, "bench", name), string(b))
		} else {
			_, err = cli.Delete(ctx, meshapi.EndpointKey(c.name, "bench", name))
		}
		if err != nil {
			return err
		}
		select {
		case at := <-hit:
			lat = append(lat, at.Sub(t0))
		case <-time.After(30 * time.Second):
			return fmt.Errorf("change %d not seen by the agent after 30s", i)
		}
		if k != nil {
			at, err := k.waitEntry(ctx, meshapi.HostPrefix(ip), c.nodeIP(i%nodes), present, 30*time.Second)
			if err != nil {
				return fmt.Errorf("change %d: %w", i, err)
			}
			klat = append(klat, at.Sub(t0))
		}
	}
	_, agentFailures, _, _ := sessionFailures(m.Status())
	fmt.Println(ch.report())
	p50, p99, maxLat := percentiles(lat)
	fmt.Printf("convergence under churn: mock remote write -> agent desired set through the cache, %d changes: p50 %s, p99 %s, max %s; agent session failures (reconnections) %d\n",
		len(lat), p50.Round(time.Microsecond), p99.Round(time.Microsecond), maxLat.Round(time.Microsecond), agentFailures)
	if k != nil {
		p50, p99, maxLat := percentiles(klat)
		fmt.Printf("convergence under churn: mock remote write -> entry in the agent's ebpf ipcache (kernel map, polled every 100µs), %d changes: p50 %s, p99 %s, max %s\n",
			len(klat), p50.Round(time.Microsecond), p99.Round(time.Microsecond), maxLat.Round(time.Microsecond))
	}
	reportLoad(ctx, "proxies during the churn phase (peaks: since it started)", e, r)

	// A remote's file removed: until the agent has withdrawn it.
	gone := w.expectRemoved("c1")
	t0 := time.Now()
	if err := e.removeFromConfigDir("c1"); err != nil {
		return err
	}
	select {
	case at := <-gone:
		fmt.Printf("remote c1's file removed from the cache's config directory -> withdrawn from the agent's desired set: %s\n", at.Sub(t0).Round(time.Millisecond))
	case <-time.After(time.Minute):
		return errors.New("removed remote not withdrawn after a minute")
	}
	return nil
}

// churnOne writes the i-th churn change.
func churnOne(ctx context.Context, cli *clientv3.Client, i, clusters, nodes, endpoints, nodeBits int) error {
	c := newCluster(i%clusters, nodeBits)
	var v any
	var key string
	if i%11 == 10 { // one node write per ten endpoint writes
		k := (i / 11) % nodes
		key = meshapi.NodeKey(c.name, nodeName(k))
		v = meshapi.Node{Cluster: c.name, ClusterID: c.id, Name: nodeName(k), InternalIPs: []netip.Addr{c.nodeIP(k)}, PodCIDRs: []netip.Prefix{c.nodeCIDR(k)}}
	} else {
		j := (i / 11) % endpoints
		k := j % nodes
		ip := c.nodeCIDR(k).Addr().Next().Next()
		if j%10 == 9 {
			ip = c.uncovered(j)
		}
		key = meshapi.EndpointKey(c.name, "bench", "pod-"+strconv.Itoa(j))
		v = meshapi.Endpoint{Cluster: c.name, ClusterID: c.id, Namespace: "bench", Name: "pod-" + strconv.Itoa(j), Node: nodeName(k), IPs: []netip.Addr{ip}, Hostname: strconv.Itoa(i)}
	}
	b, err := meshapi.Encode(v)
	if err != nil {
		return err
	}
	_, err = cli.Put(ctx, key, string(b))
	return err
}

// stormResult is what the storm child reports.
type stormResult struct {
	Agents    int
	AllSynced time.Duration
	P50, P99  time.Duration
	Keys      int64
	Bytes     int64
	// CPU is the storm clients' process's (TLS, decoding).
	CPU time.Duration
}

// cacheStorm restarts n agents at once against the replica (a child
// process; each agent its own TLS connection, listing the whole cache and
// then watching it, as a restarting agent does) and reports the time until
// all are synced and the replica's (this process's) peak RSS and CPU.
func cacheStorm(ctx context.Context, r *replica, n int) error {
	var peak atomic.Int64
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if v := rssBytes(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
		}
	})
	base := measure().rss
	cpu0 := cpuTime()
	var res stormResult
	err := runChild(ctx, &res, "-mode=storm-agents", "-cache-file="+r.cacheFile, "-storm="+strconv.Itoa(n))
	stop()
	wg.Wait()
	if err != nil {
		return err
	}
	fmt.Printf("storm: %d agents (own TLS connection each) restarted at once against one cache replica: all synced in %s (per agent p50 %s, p99 %s; each listed %d keys in pages of %d, %.0f KiB of keys and values); replica process RSS %s before, peak %s, CPU %s during the storm; the clients' process CPU %s\n",
		res.Agents, res.AllSynced.Round(time.Millisecond), res.P50.Round(time.Millisecond), res.P99.Round(time.Millisecond), res.Keys, clustermesh.CachePageSize, float64(res.Bytes)/1024, mib(base), mib(peak.Load()), (cpuTime() - cpu0).Round(time.Millisecond), res.CPU.Round(time.Millisecond))
	return nil
}

// stormAgents starts n cache clients at once, each with its own TLS
// connection: a paged listing of the whole cache prefix, then a watch from
// the listing's revision. An agent counts as synced when its listing is
// complete and its watch is established.
func stormAgents(ctx context.Context, file string, n int) error {
	cfg, err := kvstore.LoadConfig(file, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lat := make([]time.Duration, n)
	keys := make([]int64, n)
	size := make([]int64, n)
	var g errgroup.Group
	var clis sync.Map
	t0 := time.Now()
	for i := range n {
		g.Go(func() error {
			cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{DialTimeout: time.Minute})
			if err != nil {
				return err
			}
			clis.Store(i, cli)
			rev, count, bytes, err := listAll(ctx, cli)
			if err != nil {
				return fmt.Errorf("agent %d: %w", i, err)
			}
			wch := cli.Watch(clientv3.WithRequireLeader(ctx), meshapi.CacheRoot, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithCreatedNotify())
			if wr, ok := <-wch; !ok || wr.Err() != nil {
				return fmt.Errorf("agent %d: watch: %v", i, wr.Err())
			}
			lat[i], keys[i], size[i] = time.Since(t0), count, bytes
			return nil
		})
	}
	err = g.Wait()
	all := time.Since(t0)
	clis.Range(func(_, v any) bool { v.(*clientv3.Client).Close(); return true })
	if err != nil {
		return err
	}
	slices.Sort(lat)
	return json.NewEncoder(os.Stdout).Encode(stormResult{Agents: n, AllSynced: all, P50: lat[n/2], P99: lat[min(n-1, n*99/100)], Keys: keys[0], Bytes: size[0], CPU: cpuTime()})
}

// listAll lists the cache prefix in pages and returns the listing's
// revision, key count and bytes (keys and values).
func listAll(ctx context.Context, cli *clientv3.Client) (rev, count, bytes int64, err error) {
	key, end := meshapi.CacheRoot, clientv3.GetPrefixRangeEnd(meshapi.CacheRoot)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(clustermesh.CachePageSize)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, key, opts...)
		if err != nil {
			return 0, 0, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		count += int64(len(resp.Kvs))
		for _, kv := range resp.Kvs {
			bytes += int64(len(kv.Key) + len(kv.Value))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, count, bytes, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// cpuTime is the CPU time (user + system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// expectRemoved returns a channel that receives the time cluster is
// removed from the desired set.
func (w *watcher) expectRemoved(cluster string) <-chan time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.removed, w.removedHit = cluster, make(chan time.Time, 1)
	return w.removedHit
}

// RemoveCluster timestamps the awaited removal.
func (w *watcher) RemoveCluster(cluster string) {
	w.Desired.RemoveCluster(cluster)
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.removedHit != nil && cluster == w.removed {
		w.removedHit <- now
		w.removedHit = nil
	}
}
