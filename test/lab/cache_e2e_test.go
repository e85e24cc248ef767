package lab_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/pkg/agentstatus"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
	"github.com/podmesh/podmesh/pkg/meshapi"
	"github.com/podmesh/podmesh/test/lab"
)

// apiServerSelector selects the clustermesh-apiserver pods: the proxy peers
// read and, in cache mode, the cache the cluster's own agents read.
const apiServerSelector = "app.kubernetes.io/name=clustermesh-apiserver"

// TestRealLabCacheReplicaKilledUnderTraffic: 2 real clusters × 2 real nodes
// with podmesh installed from daemonset/ as it is (agents in cache mode,
// two clustermesh-apiserver replicas per cluster). It reports which replica
// every agent reads (the agents' status names the replica's epoch; each
// replica's own epoch is read from its etcd through its cache proxy), and
// measures what the second replica costs. Then, while UDP streams flow both
// ways between a c1 pod and a c2 pod, a c2 replica that serves at least one
// of c2's agents — and may be the one some c1 cache replica reads c2
// through — is deleted: no datagram is lost, no podmesh route or ipcache
// entry is removed on any node, no agent restarts; the agents it served
// list another replica (their epoch changes, one more listing, one
// failure), every other agent of both clusters keeps its session (same
// epoch, no listing, no failure), and once the replacement is Ready every
// agent reports every remote ready and the kernels hold exactly the
// expected prefixes.
func TestRealLabCacheReplicaKilledUnderTraffic(t *testing.T) {
	testutils.RequireRoot(t)
	o := realLabOptions(t)
	o.RoutingMode = lab.ModeEBPF
	ctx := withTimeout(t, 12*time.Minute)
	l := upLabWithDiagnostics(t, ctx, o, lab.Topology{Clusters: 2, Nodes: 2, Pods: 1})
	testCacheReplicaKilled(t, ctx, l)
}

func testCacheReplicaKilled(t *testing.T, ctx context.Context, l *lab.Lab) {
	c2 := l.Cluster(2)
	nodes := l.Nodes()
	for _, n := range nodes {
		st, err := l.AgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(st.Mesh.ConfigDir, "cache: ") || st.Mesh.Cache == nil {
			t.Fatalf("node %s: agent reads %q, want its cluster's cache (the DaemonSet's default mode)", n.Name, st.Mesh.ConfigDir)
		}
	}
	replicas := map[string][]cacheReplica{}
	for _, c := range l.Clusters() {
		replicas[c.Name] = cacheReplicas(t, ctx, c)
		if len(replicas[c.Name]) != 2 {
			t.Fatalf("cluster %s: want the manifests' 2 clustermesh-apiserver replicas, have %+v", c.Name, replicas[c.Name])
		}
	}
	logApiserverCost(t, replicas)
	spreadAgents(t, ctx, l, c2)
	restarts := agentRestarts(t, ctx, l, c2)
	before := cacheSessions(t, ctx, l, nodes)
	for _, n := range nodes {
		r := replicaOf(replicas[n.Cluster.Name], before[n.Name].Epoch)
		if r == nil {
			t.Fatalf("node %s reads epoch %q, which no replica of %s has", n.Name, before[n.Name].Epoch, n.Cluster.Name)
		}
		t.Logf("node %s reads replica %s on %s (%s, epoch %s); %d listings", n.Name, r.pod, r.node, r.ip, r.epoch, before[n.Name].Listings)
	}
	// The victim: the replica that serves c2's first node, so at least one
	// agent moves.
	victim := *replicaOf(replicas[c2.Name], before[c2.NodeList()[0].Name].Epoch)
	var moved, stayed []*lab.Node
	for _, n := range nodes {
		if n.Cluster == c2 && before[n.Name].Epoch == victim.epoch {
			moved = append(moved, n)
		} else {
			stayed = append(stayed, n)
		}
	}

	watches := watchRoutes(t, nodes)
	p1, p2 := realPod(t, ctx, l, 1), realPod(t, ctx, l, 2)
	into2 := startUDPStream(t, ctx, p1.NetNS, p2.NetNS, p2.IP)
	into1 := startUDPStream(t, ctx, p2.NetNS, p1.NetNS, p1.IP)

	killed := time.Now()
	if out, err := l.Kubectl(ctx, c2, "-n", lab.PodmeshNamespace, "delete", "pod", victim.pod, "--wait=false"); err != nil {
		t.Fatalf("kubectl delete pod: %v: %s", err, out)
	}
	eventually(t, 2*time.Minute, "the agents of the killed replica list another one", func() error {
		now := cacheSessions(t, ctx, l, moved)
		for _, n := range moved {
			s := now[n.Name]
			if s.Epoch == victim.epoch || !s.Connected || s.Listings <= before[n.Name].Listings {
				return fmt.Errorf("node %s: epoch %s, connected %v, %d listings", n.Name, s.Epoch, s.Connected, s.Listings)
			}
		}
		return nil
	})
	eventually(t, 2*time.Minute, "the victim gone", func() error {
		_, err := c2.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).Get(ctx, victim.pod, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("%s still there (%v)", victim.pod, err)
	})
	if err := l.WaitPodmeshRolledOut(ctx, c2, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	converged(t, ctx, l, 2*time.Minute)
	resync := time.Since(killed)
	sent2 := into2.stopAndCheckNoneLost(t)
	sent1 := into1.stopAndCheckNoneLost(t)
	checkNoRouteRemoved(t, nodes, watches, nil, "while a cache replica of c2 was replaced")
	if after := agentRestarts(t, ctx, l, c2); !equalCounts(after, restarts) {
		t.Errorf("c2's agent containers restarted: before %v, after %v", restarts, after)
	}
	after := cacheSessions(t, ctx, l, nodes)
	afterReplicas := cacheReplicas(t, ctx, c2)
	for _, n := range moved {
		b, a := before[n.Name], after[n.Name]
		r := replicaOf(afterReplicas, a.Epoch)
		where := "no replica of now"
		if r != nil {
			where = r.pod + " on " + r.node
		}
		t.Logf("node %s moved from %s to %s (epoch %s), listing %d→%d times, session started %.1fs after the delete",
			n.Name, victim.pod, where, a.Epoch, b.Listings, a.Listings, a.SessionStart.Sub(killed).Seconds())
		if a.Failures() == b.Failures() {
			t.Errorf("node %s: its replica was killed, but no cache failure was recorded", n.Name)
		}
	}
	for _, n := range stayed {
		b, a := before[n.Name], after[n.Name]
		if a.Epoch != b.Epoch || a.Listings != b.Listings || !a.Connected || a.Failures() != b.Failures() {
			t.Errorf("node %s: its replica was not killed, yet its session changed: before %+v, after %+v", n.Name, b, a)
		}
	}
	for _, n := range nodes {
		st, err := l.AgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range l.Remotes(n) {
			if rs := st.Remote(r.Name); rs == nil || !rs.Ready || rs.Reason != "" {
				t.Errorf("node %s: remote %s after the resync: %+v", n.Name, r.Name, rs)
			}
		}
	}
	t.Logf("MEASURED cache replica %s of c2 (serving %d of its agents) deleted: %d agents moved, %d kept their session; replacement Ready and the mesh converged %.1fs later; UDP %d datagrams c1→c2 and %d c2→c1, none lost; no route removed on any node",
		victim.pod, len(moved), len(moved), len(stayed), resync.Seconds(), sent2, sent1)
}

// cacheSession is an agent's cache session, as its status says.
type cacheSession struct {
	agentstatus.Cache
	failures uint64
}

// Failures is the number of cache failures the agent recorded (every
// remote's status carries the session's count).
func (s cacheSession) Failures() uint64 { return s.failures }

// cacheSessions reads every node's agent's cache session.
func cacheSessions(t *testing.T, ctx context.Context, l *lab.Lab, nodes []*lab.Node) map[string]cacheSession {
	t.Helper()
	out := map[string]cacheSession{}
	for _, n := range nodes {
		st, err := l.AgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mesh.Cache == nil {
			t.Fatalf("node %s: no cache session in the agent's status", n.Name)
		}
		s := cacheSession{Cache: *st.Mesh.Cache}
		for _, r := range st.Mesh.Remotes {
			s.failures = max(s.failures, r.Failures)
		}
		out[n.Name] = s
	}
	return out
}

// cacheReplica is one clustermesh-apiserver pod of a cluster and the epoch
// of the cache it serves.
type cacheReplica struct {
	pod, node, ip, epoch string
	pids                 []int
}

func replicaOf(rs []cacheReplica, epoch string) *cacheReplica {
	for i := range rs {
		if rs[i].epoch == epoch {
			return &rs[i]
		}
	}
	return nil
}

// cacheReplicas lists c's Ready clustermesh-apiserver pods and reads each
// one's cache epoch through its own cache proxy, as an agent of c would
// (the cache Service's name and c's agents' credential, CN local-<c>), but
// with the connection made from a node of c to the pod's own IP.
func cacheReplicas(t *testing.T, ctx context.Context, c *lab.Cluster) []cacheReplica {
	t.Helper()
	pods, err := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(ctx, metav1.ListOptions{LabelSelector: apiServerSelector})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := c.CA.IssueClient(certs.Options{CommonName: certs.LocalCN(c.Name)})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{"ca.crt": c.CA.CertPEM, "tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "cache.yaml")
	yml := kvstoretest.ClientYAML(certs.CacheEndpoint(lab.PodmeshNamespace), filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err := os.WriteFile(file, yml, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := kvstore.LoadConfig(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	netns := c.NodeList()[0].NetNS
	var out []cacheReplica
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.PodIP == "" {
			continue
		}
		podIP := p.Status.PodIP
		cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return lab.DialIn(ctx, netns, "tcp", net.JoinHostPort(podIP, port))
		}})
		if err != nil {
			t.Fatalf("cluster %s: cache client for %s: %v", c.Name, p.Name, err)
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := cli.Get(rctx, meshapi.CacheEpochKey)
		cancel()
		cli.Close()
		if err != nil || len(resp.Kvs) == 0 {
			t.Fatalf("cluster %s: read the cache epoch of %s at %s: %v (a TLS handshake from %s says: %v)", c.Name, p.Name, podIP, err, netns, tlsHandshake(ctx, netns, podIP, cfg.TLS))
		}
		out = append(out, cacheReplica{pod: p.Name, node: p.Spec.NodeName, ip: podIP, epoch: string(resp.Kvs[0].Value), pids: apiserverPIDs(c.Name, podIP)})
	}
	return out
}

// tlsHandshake says how a TLS handshake with the cache proxy at ip goes.
func tlsHandshake(ctx context.Context, netns, ip string, cfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := lab.DialIn(ctx, netns, "tcp", net.JoinHostPort(ip, fmt.Sprint(certs.CachePort)))
	if err != nil {
		return err
	}
	defer raw.Close()
	cfg = cfg.Clone()
	cfg.ServerName = certs.CacheServiceName + "." + lab.PodmeshNamespace + ".svc"
	cfg.NextProtos = []string{"h2"}
	return tls.Client(raw, cfg).HandshakeContext(ctx)
}

// apiserverPIDs returns the clustermesh-apiserver processes of cluster
// whose network namespace holds podIP.
func apiserverPIDs(cluster, podIP string) []int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []int
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if filepath.Base(args[0]) != "clustermesh-apiserver" || !slices.Contains(args, "--cluster-name="+cluster) {
			continue
		}
		fib, err := os.ReadFile(filepath.Join(filepath.Dir(f), "net", "fib_trie"))
		if err != nil || !strings.Contains(string(fib), podIP) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// logApiserverCost samples the CPU time and RSS of every replica over 20 s
// of a converged, quiet mesh: what each replica (the second one included)
// costs the machine.
func logApiserverCost(t *testing.T, replicas map[string][]cacheReplica) {
	t.Helper()
	cpu := func(pid int) (time.Duration, uint64) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, 0
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		rss, _ := strconv.ParseUint(f[21], 10, 64)
		return time.Duration(ut+st) * 10 * time.Millisecond, rss * uint64(os.Getpagesize())
	}
	const window = 20 * time.Second
	start := map[int]time.Duration{}
	for _, rs := range replicas {
		for _, r := range rs {
			for _, pid := range r.pids {
				start[pid], _ = cpu(pid)
			}
		}
	}
	time.Sleep(window) // a measurement window, not synchronisation
	for cluster, rs := range replicas {
		for _, r := range rs {
			var used time.Duration
			var rss uint64
			for _, pid := range r.pids {
				c, m := cpu(pid)
				used += c - start[pid]
				rss += m
			}
			t.Logf("MEASURED cluster %s replica %s (%d processes): %.1f millicores over %s of a quiet mesh, RSS %.1f MiB",
				cluster, r.pod, len(r.pids), float64(used)/float64(window)*1000, window, float64(rss)/(1<<20))
		}
	}
}

// spreadAgents makes c's two agents read different replicas, so the drill
// has an agent that must move and one that must not: while both read the
// same one, the second node's agent pod is replaced (an agent restart keeps
// the kernel's state) and its new connection lands on a replica the
// Service picks at random.
func spreadAgents(t *testing.T, ctx context.Context, l *lab.Lab, c *lab.Cluster) {
	t.Helper()
	ns := c.NodeList()
	for try := 1; ; try++ {
		s := cacheSessions(t, ctx, l, ns)
		if s[ns[0].Name].Epoch != s[ns[1].Name].Epoch {
			return
		}
		if try > 8 {
			t.Fatalf("cluster %s: both agents still read epoch %s after %d agent restarts", c.Name, s[ns[0].Name].Epoch, try-1)
		}
		pods, err := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(ctx, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=" + lab.AgentDaemonSet, FieldSelector: "spec.nodeName=" + ns[1].Name,
		})
		if err != nil || len(pods.Items) != 1 {
			t.Fatalf("agent pod on %s: %v (%v)", ns[1].Name, pods, err)
		}
		old := pods.Items[0].Name
		t.Logf("both agents of %s read epoch %s: replacing agent pod %s", c.Name, s[ns[0].Name].Epoch, old)
		if out, err := l.Kubectl(ctx, c, "-n", lab.PodmeshNamespace, "delete", "pod", old); err != nil {
			t.Fatalf("kubectl delete pod: %v: %s", err, out)
		}
		eventually(t, 2*time.Minute, "the replacement agent on "+ns[1].Name+" reads the cache", func() error {
			if _, err := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).Get(ctx, old, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s still there (%v)", old, err)
			}
			st, err := l.AgentStatus(ctx, ns[1])
			if err != nil {
				return err
			}
			if cs := st.Mesh.Cache; cs == nil || !cs.Connected || cs.Epoch == "" || !st.Mesh.Synced {
				return fmt.Errorf("cache session %+v, synced %v", cs, st.Mesh.Synced)
			}
			return nil
		})
		converged(t, ctx, l, 2*time.Minute)
	}
}

// agentRestarts returns the restart count of every agent pod of c.
func agentRestarts(t *testing.T, ctx context.Context, l *lab.Lab, c *lab.Cluster) map[string]int32 {
	t.Helper()
	pods, err := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + lab.AgentDaemonSet})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int32{}
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			out[p.Name] += cs.RestartCount
		}
	}
	return out
}

func equalCounts(a, b map[string]int32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// installLab creates a lab's clusters and nodes, installs podmesh and the
// echo pods as lab.Up does, and returns without waiting for the mesh; when
// the test fails it logs the podmesh pods' logs and every cluster's cache
// status before the lab goes.
func installLab(t *testing.T, ctx context.Context, o lab.Options, topo lab.Topology) (*lab.Lab, time.Time) {
	t.Helper()
	l, err := lab.New(ctx, o)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logAgentPods(t, l)
			logCacheStatus(t, l)
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if lo, _ := lab.Discover(o.Prefix, ""); !lo.Empty() {
			t.Errorf("lab %s left %s behind", o.Prefix, lo)
		}
	})
	clusters := make([]*lab.Cluster, topo.Clusters)
	var g errgroup.Group
	for k := range clusters {
		g.Go(func() error {
			c, err := l.AddCluster(ctx, lab.ClusterSpec{Index: k + 1})
			if err != nil {
				return err
			}
			clusters[k] = c
			var nodes errgroup.Group
			for j := 1; j <= topo.Nodes; j++ {
				nodes.Go(func() error {
					_, err := l.AddKubeNode(ctx, c, j)
					return err
				})
			}
			return nodes.Wait()
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	installed := time.Now()
	for _, c := range clusters {
		g.Go(func() error {
			if err := l.InstallPodmesh(ctx, c); err != nil {
				return err
			}
			return l.DeployEcho(ctx, c, topo.Nodes*topo.Pods)
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return l, installed
}

// upLabWithDiagnostics brings a lab up as lab.Up does, but when the mesh
// does not converge it logs, before the lab goes, what says why: the
// podmesh pods' logs and every cluster's cache status (the
// clustermesh-apiserver's /status/cache).
func upLabWithDiagnostics(t *testing.T, ctx context.Context, o lab.Options, topo lab.Topology) *lab.Lab {
	t.Helper()
	l, installed := installLab(t, ctx, o, topo)
	converged(t, ctx, l, 3*time.Minute)
	t.Logf("MEASURED podmesh install (apply -k + Secrets) on %d clusters, then echo pods Ready, to mesh converged: %.1fs", topo.Clusters, time.Since(installed).Seconds())
	return l
}

// logCacheStatus logs every cluster's cache status, read from the
// clustermesh-apiserver pods' health port from a node of the cluster.
func logCacheStatus(t *testing.T, l *lab.Lab) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range l.Clusters() {
		nodes := c.NodeList()
		if len(nodes) == 0 {
			continue
		}
		pods, err := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(ctx, metav1.ListOptions{LabelSelector: apiServerSelector})
		if err != nil {
			t.Logf("--- cluster %s: list clustermesh-apiserver pods: %v", c.Name, err)
			continue
		}
		for _, p := range pods.Items {
			body, err := getIn(ctx, nodes[0].NetNS, "http://"+p.Status.PodIP+":9880/status/cache")
			t.Logf("--- cluster %s: %s /status/cache (%v):\n%s", c.Name, p.Name, err, body)
		}
	}
}

func getIn(ctx context.Context, netns, url string) (string, error) {
	if !strings.HasPrefix(url, "http://") || strings.HasPrefix(url, "http://:") {
		return "", errors.New("no address")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := lab.HTTPClientIn(netns).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
