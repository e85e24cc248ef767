package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

func main() {
	mode := flag.String("mode", "latency", "latency, memory or cache (cache-agent and storm-agents are its children)")
	changes := flag.Int("changes", 1000, "latency: number of changes")
	clusters := flag.Int("clusters", 50, "memory: remote clusters")
	nodes := flag.Int("nodes", 100, "nodes per remote cluster")
	endpoints := flag.Int("endpoints", 1000, "endpoints per remote cluster")
	etcdBin := flag.String("etcd", "bin/etcd", "etcd binary")
	storm := flag.Int("storm", 1000, "cache: agents restarted at once against one cache replica (0: no storm)")
	churn := flag.Duration("churn", 20*time.Second, "cache: how long to measure convergence under churn (0: not at all)")
	cacheFile := flag.String("cache-file", "", "cache-agent, storm-agents: the cache's etcd-client file")
	kernel := flag.Bool("kernel", false, "cache: also measure convergence into an ebpf datapath (needs root; own network namespace and bpffs directory)")
	viaProxy := flag.Bool("proxy", false, "latency: read through clustermesh-apiserver's read-only mTLS proxy (in this process) instead of etcd directly")
	flag.Parse()
	if *kernel && (*mode != "cache" || *churn <= 0) {
		fmt.Fprintln(os.Stderr, "bench-agent: -kernel measures convergence under churn: it needs -mode=cache and -churn > 0")
		os.Exit(2)
	}
	if *kernel && os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-agent:", errNeedsRoot)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var err error
	switch *mode {
	case "latency":
		err = latency(ctx, *etcdBin, *changes, *nodes, *endpoints, *viaProxy)
	case "memory":
		err = memory(ctx, *etcdBin, *clusters, *nodes, *endpoints)
	case "cache":
		err = cacheBench(ctx, *etcdBin, *clusters, *nodes, *endpoints, *storm, *churn, *kernel)
	case "cache-agent":
		err = cacheAgent(ctx, *cacheFile)
	case "storm-agents":
		err = stormAgents(ctx, *cacheFile, *storm)
	default:
		err = fmt.Errorf("-mode %q: want latency, memory or cache", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-agent:", err)
		cancel()
		os.Exit(1)
	}
}

// env is a bin/etcd child with TLS material and an admin client.
type env struct {
	dir      string
	endpoint string
	// agentEndpoint, when set, is what the agent connects to (a proxy).
	agentEndpoint string
	ca            *certs.CA
	admin         *clientv3.Client
	// meshFiles is the config directory's content (writeConfigDir).
	meshFiles map[string][]byte
	cmd       *exec.Cmd
	// remoteLoad counts what the proxy in front of the etcd serves
	// (startProxy); metricsClient reads the etcd's /metrics.
	remoteLoad    proxyLoad
	metricsClient *http.Client
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startEtcd(ctx context.Context, bin string) (_ *env, err error) {
	dir, err := os.MkdirTemp("", "bench-agent")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.ca, err = certs.NewCA(certs.Options{CommonName: "bench-ca"}); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), e.ca.CertPEM, 0o644); err != nil {
		return nil, err
	}
	srv, err := e.ca.IssueServer(certs.Options{CommonName: "etcd", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		return nil, err
	}
	if err := srv.WriteFiles(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), true); err != nil {
		return nil, err
	}
	cp, err := freePort()
	if err != nil {
		return nil, err
	}
	pp, err := freePort()
	if err != nil {
		return nil, err
	}
	e.endpoint = fmt.Sprintf("https://127.0.0.1:%d", cp)
	peer := fmt.Sprintf("http://127.0.0.1:%d", pp)
	e.cmd = exec.CommandContext(ctx, bin,
		"--name=bench", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls="+e.endpoint, "--advertise-client-urls="+e.endpoint,
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer, "--initial-cluster=bench="+peer,
		"--cert-file="+filepath.Join(dir, "server.crt"), "--key-file="+filepath.Join(dir, "server.key"),
		"--trusted-ca-file="+filepath.Join(dir, "ca.crt"), "--client-cert-auth",
		"--unsafe-no-fsync", "--quota-backend-bytes=8589934592", "--log-level=error")
	e.cmd.Stdout, e.cmd.Stderr = io.Discard, os.Stderr
	if err := e.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	cfg, err := e.clientConfig("admin")
	if err != nil {
		return nil, err
	}
	if e.admin, err = kvstore.NewClient(cfg, kvstore.ClientOptions{}); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = e.admin.Get(cctx, "ready")
		cancel()
		if err == nil {
			return e, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("etcd not ready: %w", err)
		}
	}
}

// clientConfig writes an etcd-client YAML for a client certificate named
// base and loads it the way the agent does.
func (e *env) clientConfig(base string) (*kvstore.Config, error) {
	kp, err := e.ca.IssueClient(certs.Options{CommonName: base})
	if err != nil {
		return nil, err
	}
	if err := kp.WriteFiles(filepath.Join(e.dir, base+".crt"), filepath.Join(e.dir, base+".key"), true); err != nil {
		return nil, err
	}
	path := filepath.Join(e.dir, base+".yaml")
	y := fmt.Sprintf("endpoints: [%s]\ntrusted-ca-file: ca.crt\ncert-file: %s.crt\nkey-file: %s.key\n", e.endpoint, base, base)
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		return nil, err
	}
	return kvstore.LoadConfig(path, nil)
}

func (e *env) close() {
	if e.admin != nil {
		e.admin.Close()
	}
	if e.cmd != nil && e.cmd.Process != nil {
		e.cmd.Process.Kill()
		e.cmd.Wait()
	}
	os.RemoveAll(e.dir)
}

// startProxy puts clustermesh-apiserver's read-only proxy in front of the
// etcd; the agent's config files then name the proxy.
func (e *env) startProxy(ctx context.Context) (func(), error) {
	cfg, err := e.clientConfig("proxy")
	if err != nil {
		return nil, err
	}
	cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{})
	if err != nil {
		return nil, err
	}
	srv, err := e.ca.IssueServer(certs.Options{CommonName: "proxy", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		cli.Close()
		return nil, err
	}
	pair, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	if err != nil {
		cli.Close()
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(e.ca.Cert)
	tlsCfg, err := proxy.ServerTLS(pair, pool, []string{"remote-local"})
	if err != nil {
		cli.Close()
		return nil, err
	}
	mcfg, err := e.clientConfig("metrics")
	if err != nil {
		cli.Close()
		return nil, err
	}
	e.metricsClient = &http.Client{Transport: &http.Transport{TLSClientConfig: mcfg.TLS}}
	e.remoteLoad.countWatches(cli)
	lis, err := e.remoteLoad.listen()
	if err != nil {
		cli.Close()
		return nil, err
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	p, err := proxy.Start(ctx, proxy.Config{Listener: lis, TLS: tlsCfg, Client: cli, Log: log})
	if err != nil {
		lis.Close()
		cli.Close()
		return nil, err
	}
	e.agentEndpoint = "https://" + p.Addr()
	return func() { p.Stop(); cli.Close() }, nil
}

// writeConfigDir lays out the agent's config directory as a Secret volume:
// one file per cluster, all using one client certificate.
func (e *env) writeConfigDir(names []string) (string, error) {
	kp, err := e.ca.IssueClient(certs.Options{CommonName: "remote-local"})
	if err != nil {
		return "", err
	}
	files := map[string][]byte{"agent.crt": kp.CertPEM, "agent.key": kp.KeyPEM, "agent-ca.crt": e.ca.CertPEM}
	for _, n := range names {
		ep := e.endpoint
		if e.agentEndpoint != "" {
			ep = e.agentEndpoint
		}
		files[n] = fmt.Appendf(nil, "endpoints: [%s]\ntrusted-ca-file: agent-ca.crt\ncert-file: agent.crt\nkey-file: agent.key\n", ep)
	}
	dir := filepath.Join(e.dir, "clustermesh")
	e.meshFiles = files
	return dir, certs.WriteSecretVolume(dir, files)
}

// removeFromConfigDir removes one cluster's file from the config directory
// written by writeConfigDir, the way the kubelet updates a Secret volume.
func (e *env) removeFromConfigDir(name string) error {
	delete(e.meshFiles, name)
	return certs.WriteSecretVolume(filepath.Join(e.dir, "clustermesh"), e.meshFiles)
}

// cluster describes one synthetic remote cluster.
type cluster struct {
	name  string
	id    uint32
	index int // 0..249 ; pod CIDR 10.(octet()).0.0/16
	// nodeBits is the length of its nodes' pod CIDRs (shape.go); 0 means 24.
	nodeBits int
}

// octet is the second octet of the cluster's pod CIDR: 10..255 for the
// first 246 clusters, then 1..9 (10.0.0.0/16 is the local cluster's).
func (c cluster) octet() byte {
	if o := c.index + 10; o < 256 {
		return byte(o)
	}
	return byte(c.index + 10 - 255)
}

func (c cluster) cidr() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, c.octet(), 0, 0}), 16)
}

// nodeCIDR is node k's pod CIDR, the k-th block of c.nodeBits in the
// cluster's /16 (below 10.x.200.0: nodeBitsFor sees to it).
func (c cluster) nodeCIDR(k int) netip.Prefix {
	bits := c.nodeBits
	if bits == 0 {
		bits = 24
	}
	return netip.PrefixFrom(addr4(10<<24|uint32(c.octet())<<16|uint32(k)<<(32-bits)), bits)
}

// nodeIP is node k's InternalIP (its tunnel endpoint): 100.64.0.0/10 holds
// 16,383 distinct node IPs for each of 256 clusters.
func (c cluster) nodeIP(k int) netip.Addr {
	return addr4(100<<24 | 64<<16 | uint32(c.index)<<14 | uint32(k+1))
}

// uncovered returns the i-th IP from 10.x.200.0 (i < maxUncovered), outside
// every node CIDR.
func (c cluster) uncovered(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, c.octet(), byte(200 + i/256), byte(i % 256)})
}

// publish writes a cluster's config, heartbeat, canaries, nodes and
// endpoints (every tenth endpoint outside its node's CIDR) in batches.
func publish(ctx context.Context, cli *clientv3.Client, c cluster, nodes, endpoints int) error {
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := cli.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	put := func(key string, v any) error {
		var s string
		if str, ok := v.(string); ok {
			s = str
		} else {
			b, err := meshapi.Encode(v)
			if err != nil {
				return err
			}
			s = string(b)
		}
		ops = append(ops, clientv3.OpPut(key, s))
		if len(ops) == 100 {
			return flush()
		}
		return nil
	}
	errs := []error{
		put(meshapi.ClusterConfigKey(c.name), meshapi.ClusterConfig{Name: c.name, ID: c.id, PodCIDRs: []netip.Prefix{c.cidr()}, FormatVersion: meshapi.FormatVersion, Capabilities: meshapi.Capabilities{Endpoints: true}}),
		put(meshapi.HeartbeatKey(c.name), meshapi.FormatTime(time.Now())),
	}
	for k := range nodes {
		errs = append(errs, put(meshapi.NodeKey(c.name, nodeName(k)), meshapi.Node{Cluster: c.name, ClusterID: c.id, Name: nodeName(k), InternalIPs: []netip.Addr{c.nodeIP(k)}, PodCIDRs: []netip.Prefix{c.nodeCIDR(k)}}))
	}
	for i := range endpoints {
		k := i % nodes
		ip := c.nodeCIDR(k).Addr()
		for range i/nodes + 2 {
			ip = ip.Next()
		}
		if i%10 == 9 {
			ip = c.uncovered(i)
		}
		errs = append(errs, put(meshapi.EndpointKey(c.name, "bench", "pod-"+strconv.Itoa(i)), meshapi.Endpoint{Cluster: c.name, ClusterID: c.id, Namespace: "bench", Name: "pod-" + strconv.Itoa(i), Node: nodeName(k), IPs: []netip.Addr{ip}}))
	}
	for _, k := range meshapi.SyncedKinds {
		errs = append(errs, put(meshapi.SyncedKey(c.name, k), meshapi.FormatTime(time.Now())))
	}
	errs = append(errs, flush())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("publish %s: %w", c.name, err)
	}
	return nil
}

func nodeName(k int) string { return "node-" + strconv.Itoa(k) }

func startMesh(ctx context.Context, dir string, desired clustermesh.DesiredSet) (*clustermesh.Mesh, func(), error) {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	m, err := clustermesh.New(clustermesh.Options{
		LocalCluster: "local", LocalClusterID: 1, LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
		LocalTunnelIP: netip.MustParseAddr("172.31.0.1"), ConfigDir: dir, Desired: desired, SyncTimeout: time.Hour, Log: log,
	})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.Run(ctx)
	}()
	return m, func() { cancel(); <-done }, nil
}

// watcher is a desired set that timestamps when one awaited condition on
// the entries first holds.
type watcher struct {
	*datapath.Desired

	// mu protects prefix, present, hit, removed and removedHit.
	mu         sync.Mutex
	prefix     netip.Prefix
	present    bool
	hit        chan time.Time
	removed    string
	removedHit chan time.Time
}

func (w *watcher) expect(p netip.Prefix, present bool) <-chan time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.prefix, w.present, w.hit = p, present, make(chan time.Time, 1)
	return w.hit
}

func (w *watcher) SetCluster(cluster string, podCIDRs []netip.Prefix, entries []datapath.Entry) {
	w.Desired.SetCluster(cluster, podCIDRs, entries)
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hit == nil {
		return
	}
	found := slices.ContainsFunc(entries, func(e datapath.Entry) bool { return e.Prefix == w.prefix })
	if found == w.present {
		w.hit <- now
		w.hit = nil
	}
}

func latency(ctx context.Context, bin string, changes, nodes, endpoints int, viaProxy bool) error {
	e, err := startEtcd(ctx, bin)
	if err != nil {
		return err
	}
	defer e.close()
	path := "TLS etcd on loopback"
	if viaProxy {
		stop, err := e.startProxy(ctx)
		if err != nil {
			return err
		}
		defer stop()
		path = "read-only mTLS proxy -> TLS etcd on loopback"
	}
	c := cluster{name: "east", id: 2, index: 0}
	if err := publish(ctx, e.admin, c, nodes, endpoints); err != nil {
		return err
	}
	dir, err := e.writeConfigDir([]string{c.name})
	if err != nil {
		return err
	}
	w := &watcher{Desired: datapath.NewDesired()}
	m, stop, err := startMesh(ctx, dir, w)
	if err != nil {
		return err
	}
	defer stop()
	if err := waitSynced(ctx, m, time.Minute); err != nil {
		return err
	}

	lat := make([]time.Duration, 0, changes)
	puts := make([]time.Duration, 0, changes)
	for i := range changes {
		ip := c.uncovered(1000 + i/2) // beyond the published endpoints' uncovered IPs
		key := meshapi.EndpointKey(c.name, "bench", "latency-"+strconv.Itoa(i/2))
		present := i%2 == 0
		hit := w.expect(meshapi.HostPrefix(ip), present)
		t0 := time.Now()
		if present {
			b, _ := meshapi.Encode(meshapi.Endpoint{Cluster: c.name, ClusterID: c.id, Namespace: "bench", Name: "latency-" + strconv.Itoa(i/2), Node: nodeName(i % nodes), IPs: []netip.Addr{ip}})
			_, err = e.admin.Put(ctx, key, string(b))
		} else {
			_, err = e.admin.Delete(ctx, key)
		}
		if err != nil {
			return fmt.Errorf("change %d: %w", i, err)
		}
		puts = append(puts, time.Since(t0))
		select {
		case t1 := <-hit:
			lat = append(lat, t1.Sub(t0))
		case <-time.After(30 * time.Second):
			return fmt.Errorf("change %d not seen in the desired set after 30s", i)
		}
	}
	fmt.Printf("write -> desired-set latency over %d changes (1 remote, %d nodes, %d endpoints, %s):\n", changes, nodes, endpoints, path)
	printPercentiles("  agent (write issued -> desired set)", lat)
	printPercentiles("  etcd write round trip alone        ", puts)
	return nil
}

func printPercentiles(label string, d []time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	p := func(q float64) time.Duration {
		return s[int(math.Ceil(q*float64(len(s))))-1]
	}
	fmt.Printf("%s: p50 %s  p90 %s  p99 %s  max %s\n", label, p(0.50).Round(time.Microsecond), p(0.90).Round(time.Microsecond), p(0.99).Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond))
}

func waitSynced(ctx context.Context, m *clustermesh.Mesh, d time.Duration) error {
	select {
	case <-m.Synced():
		return nil
	case <-time.After(d):
		var not []string
		for _, r := range m.Status().Remotes {
			if !r.Synced {
				not = append(not, r.Cluster+": "+r.Reason)
			}
		}
		return fmt.Errorf("not synced after %s: %s", d, strings.Join(not, "; "))
	case <-ctx.Done():
		return ctx.Err()
	}
}

func memory(ctx context.Context, bin string, clusters, nodes, endpoints int) error {
	nodeBits, err := nodeBitsFor(nodes, endpoints)
	if err != nil {
		return err
	}
	e, err := startEtcd(ctx, bin)
	if err != nil {
		return err
	}
	defer e.close()
	var names []string
	t0 := time.Now()
	for i := range clusters {
		c := newCluster(i, nodeBits)
		if err := publish(ctx, e.admin, c, nodes, endpoints); err != nil {
			return err
		}
		names = append(names, c.name)
	}
	fmt.Printf("published %d clusters x %d nodes x %d endpoints in %s\n", clusters, nodes, endpoints, time.Since(t0).Round(time.Millisecond))
	dir, err := e.writeConfigDir(names)
	if err != nil {
		return err
	}
	e.admin.Close()
	e.admin = nil

	base := measure()
	desired := datapath.NewDesired()
	t1 := time.Now()
	m, stop, err := startMesh(ctx, dir, desired)
	if err != nil {
		return err
	}
	defer stop()
	if err := waitSynced(ctx, m, 10*time.Minute); err != nil {
		return err
	}
	syncTime := time.Since(t1)
	st := m.Status()
	var n, ep, pf int
	for _, r := range st.Remotes {
		n += r.Nodes
		ep += r.Endpoints
		pf += r.Prefixes
	}
	after := measure()
	fmt.Printf("all %d remotes synced in %s: %d nodes, %d endpoints, %d desired prefixes (snapshot holds %d)\n", len(st.Remotes), syncTime.Round(time.Millisecond), n, ep, pf, len(desired.Snapshot().Entries))
	fmt.Printf("baseline before the mesh: heap in use %s, RSS %s, goroutines %d\n", mib(base.heap), mib(base.rss), base.goroutines)
	fmt.Printf("holding the mesh:         heap in use %s, RSS %s, goroutines %d\n", mib(after.heap), mib(after.rss), after.goroutines)
	fmt.Printf("mesh cost:                heap in use +%s, RSS +%s\n", mib(after.heap-base.heap), mib(after.rss-base.rss))
	return nil
}

type mem struct {
	heap, rss  int64
	goroutines int
}

func measure() mem {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{heap: int64(ms.HeapInuse), rss: rssBytes(), goroutines: runtime.NumGoroutine()}
}

func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
