package lab_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/test/lab"
)

// apiServerSelector selects the clustermesh-apiserver pods: the proxy peers
// read and, in cache mode, the cache the cluster's own agents read.
const apiServerSelector = "app.kubernetes.io/name=clustermesh-apiserver"

// TestRealLabCacheReplicaKilledUnderTraffic: 2 real clusters × 2 real nodes
// with podmesh installed from daemonset/ as it is (agents in cache mode, the
// default). UDP streams flow both ways between a c1 pod and a c2 pod while
// c2's clustermesh-apiserver pod — c2's only cache replica, and the proxy
// c1's cache reads c2 through — is deleted and replaced: no datagram is lost,
// no podmesh route or ipcache entry is removed on any node (c2's, whose
// agents lost their cache, nor c1's), c2's agents keep running (same
// containers, no restart), and once the replacement is Ready every agent
// again reports every remote ready from a cache and the kernels hold exactly
// the expected prefixes.
func TestRealLabCacheReplicaKilledUnderTraffic(t *testing.T) {
	testutils.RequireRoot(t)
	o := realLabOptions(t)
	o.RoutingMode = lab.ModeEBPF
	ctx := withTimeout(t, 12*time.Minute)
	l := upLabWithDiagnostics(t, ctx, o, lab.Topology{Clusters: 2, Nodes: 2, Pods: 1})
	testCacheReplicaKilled(t, ctx, l)
}

func testCacheReplicaKilled(t *testing.T, ctx context.Context, l *lab.Lab) {
	c1, c2 := l.Cluster(1), l.Cluster(2)
	nodes := l.Nodes()
	for _, n := range nodes {
		st, err := l.AgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(st.Mesh.ConfigDir, "cache: ") {
			t.Fatalf("node %s: agent reads %q, want its cluster's cache (the DaemonSet's default mode)", n.Name, st.Mesh.ConfigDir)
		}
	}
	restarts := agentRestarts(t, ctx, l, c2)
	cacheFailures := func(n *lab.Node) (uint64, error) {
		st, err := l.AgentStatus(ctx, n)
		if err != nil {
			return 0, err
		}
		rs := st.Remote(c1.Name)
		if rs == nil {
			return 0, fmt.Errorf("node %s: no status for %s", n.Name, c1.Name)
		}
		return rs.Failures, nil
	}
	failuresBefore := map[string]uint64{}
	for _, n := range c2.NodeList() {
		f, err := cacheFailures(n)
		if err != nil {
			t.Fatal(err)
		}
		failuresBefore[n.Name] = f
	}

	watches := watchRoutes(t, nodes)
	p1, p2 := realPod(t, ctx, l, 1), realPod(t, ctx, l, 2)
	into2 := startUDPStream(t, ctx, p1.NetNS, p2.NetNS, p2.IP)
	into1 := startUDPStream(t, ctx, p2.NetNS, p1.NetNS, p1.IP)

	before, err := c2.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(ctx, metav1.ListOptions{LabelSelector: apiServerSelector})
	if err != nil || len(before.Items) != 1 {
		t.Fatalf("want one clustermesh-apiserver pod in c2, have %v (%v)", before, err)
	}
	victim := before.Items[0].Name
	killed := time.Now()
	if out, err := l.Kubectl(ctx, c2, "-n", lab.PodmeshNamespace, "delete", "pod", victim, "--wait=false"); err != nil {
		t.Fatalf("kubectl delete pod: %v: %s", err, out)
	}
	// The agents notice: their cache stops answering (the probe fails or
	// the session ends) before the replacement serves them again.
	eventually(t, time.Minute, "c2's agents notice their cache is gone", func() error {
		for _, n := range c2.NodeList() {
			f, err := cacheFailures(n)
			if err != nil {
				return err
			}
			if f == failuresBefore[n.Name] {
				return fmt.Errorf("node %s: no new cache failure recorded yet", n.Name)
			}
		}
		return nil
	})
	eventually(t, 2*time.Minute, "the victim gone", func() error {
		_, err := c2.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).Get(ctx, victim, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("%s still there (%v)", victim, err)
	})
	if err := l.WaitPodmeshRolledOut(ctx, c2, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	converged(t, ctx, l, 2*time.Minute)
	resync := time.Since(killed)
	sent2 := into2.stopAndCheckNoneLost(t)
	sent1 := into1.stopAndCheckNoneLost(t)
	checkNoRouteRemoved(t, nodes, watches, nil, "while c2's cache was replaced")
	if after := agentRestarts(t, ctx, l, c2); !equalCounts(after, restarts) {
		t.Errorf("c2's agent containers restarted: before %v, after %v", restarts, after)
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
	t.Logf("MEASURED cache pod %s of c2 deleted: its replacement Ready and the mesh converged %.1fs later; UDP %d datagrams c1→c2 and %d c2→c1, none lost; no route removed on any node",
		victim, resync.Seconds(), sent2, sent1)
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
