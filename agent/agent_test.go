package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/datapath"
)

// fakeDatapath "programs" every desired entry at once and reports counts,
// standing in for the kernel reconciler (which needs root).
type fakeDatapath struct {
	cfg datapath.Config

	// mu protects programmed.
	mu         sync.Mutex
	programmed map[string]int
}

func (f *fakeDatapath) Run(ctx context.Context) error {
	for {
		snap := f.cfg.Desired.Snapshot()
		counts := make(map[string]int)
		for _, e := range snap.Entries {
			counts[e.Cluster]++
		}
		f.mu.Lock()
		f.programmed = counts
		f.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-f.cfg.Desired.Changed():
		}
	}
}

func (f *fakeDatapath) Status() datapath.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return datapath.Status{Mode: f.cfg.Mode + " (fake)", Programmed: f.programmed}
}

func (f *fakeDatapath) Collectors() []prometheus.Collector { return nil }

type agentUnderTest struct {
	addr string
	dp   *fakeDatapath
}

func startAgent(t *testing.T, kube kubernetes.Interface, dir string) *agentUnderTest {
	t.Helper()
	cfg, err := parseFlags([]string{
		"--node-name=w1", "--cluster-name=west", "--cluster-id=1", "--pod-cidrs=10.1.0.0/16",
		"--mesh-mode=direct", "--clustermesh-config=" + dir, "--status-listen=127.0.0.1:0", "--sync-timeout=1m",
	}, func(string) string { return "" }, io.Discard)
	require.NoError(t, err)
	a := &agentUnderTest{}
	addrc := make(chan string, 1)
	log := logrus.New()
	log.SetOutput(io.Discard)
	d := deps{
		kube: kube, log: log,
		newDatapath: func(c datapath.Config) (dataplane, error) {
			a.dp = &fakeDatapath{cfg: c}
			return a.dp, nil
		},
		listening: func(addr string) { addrc <- addr },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, d) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	select {
	case a.addr = <-addrc:
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not start its status server within 30s")
	}
	return a
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func TestAgentServesStatusHealthAndMetrics(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	east.PutEndpoint(t, "default", "p", "e1", "10.2.200.1")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)

	kube := fake.NewSimpleClientset(&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "w1"},
		Spec:       corev1.NodeSpec{PodCIDRs: []string{"10.1.3.0/24"}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "w1"}, {Type: corev1.NodeInternalIP, Address: "192.168.0.11"}}},
	})
	a := startAgent(t, kube, dir.Dir)
	require.Equal(t, "192.168.0.11", a.dp.cfg.LocalIP.String(), "the datapath's tunnel source is the node's InternalIP")
	require.Equal(t, "ebpf", a.dp.cfg.Mode)
	require.Equal(t, uint32(1), a.dp.cfg.LocalClusterID)

	code, _ := get(t, "http://"+a.addr+"/healthz")
	require.Equal(t, http.StatusOK, code)

	var out bytes.Buffer
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out.Reset()
		err := statusCommand(context.Background(), []string{"--status-listen=" + a.addr}, &out, io.Discard)
		require.NoError(c, err)
		// Programmed (2/2) comes first; ready once the first heartbeat read answers.
		assert.Regexp(c, `east\s+2\s+yes\s+\S+ ago\s+1\s+1\s+2/2\s+0\s+-`, out.String(), "status never showed east ready and programmed")
	}, 20*time.Second, 20*time.Millisecond)
	t.Logf("podmesh-agent status:\n%s", out.String())
	require.Contains(t, out.String(), "cluster west (id 1), node w1 (192.168.0.11), synced")

	code, _ = get(t, "http://"+a.addr+"/readyz")
	require.Equal(t, http.StatusOK, code)
	code, body := get(t, "http://"+a.addr+"/status")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `"cluster": "east"`)
	code, body = get(t, "http://"+a.addr+"/metrics")
	require.Equal(t, http.StatusOK, code)
	for _, want := range []string{
		"podmesh_agent_remote_clusters 1",
		"podmesh_agent_remote_clusters_ready 1",
		`podmesh_agent_remote_cluster_ready{cluster="east"} 1`,
		`podmesh_agent_remote_cluster_prefixes{cluster="east"} 2`,
		`podmesh_agent_remote_cluster_nodes{cluster="east"} 1`,
		"podmesh_agent_initial_sync_complete 1",
		"go_goroutines",
	} {
		require.Contains(t, body, want)
	}

	// Removing the file withdraws east from the datapath's input.
	dir.Remove(t, "east")
	require.Eventually(t, func() bool { return len(a.dp.cfg.Desired.Snapshot().Entries) == 0 }, 5*time.Second, 10*time.Millisecond)
}

func TestAgentWaitsForItsNode(t *testing.T) {
	kube := fake.NewSimpleClientset()
	dir := cmt.NewConfigDir(t)
	go func() {
		// The node appears after the agent has looked for it and not found it.
		assert.Eventually(t, func() bool { return len(kube.Actions()) > 0 }, 30*time.Second, 10*time.Millisecond)
		_, _ = kube.CoreV1().Nodes().Create(context.Background(), &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "w1"},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "fd00::11"}}},
		}, metav1.CreateOptions{})
	}()
	a := startAgent(t, kube, dir.Dir)
	require.Equal(t, "fd00::11", a.dp.cfg.LocalIP.String())
}

func TestStatusCommandFailsClearlyWithoutAgent(t *testing.T) {
	err := statusCommand(context.Background(), []string{"--status-listen=127.0.0.1:1"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "query agent status at 127.0.0.1:1")
}

// failingDatapath fails as soon as it runs.
type failingDatapath struct{ fakeDatapath }

var errBoom = errors.New("boom")

func (f *failingDatapath) Run(context.Context) error { return errBoom }

// TestAgentStopsEveryPartWhenOnePartFails: a failing part ends the agent
// with its error, named after the part, and the other parts stop with it.
func TestAgentStopsEveryPartWhenOnePartFails(t *testing.T) {
	cfg, err := parseFlags([]string{
		"--node-name=w1", "--cluster-name=west", "--cluster-id=1", "--pod-cidrs=10.1.0.0/16",
		"--mesh-mode=direct", "--clustermesh-config=" + cmt.NewConfigDir(t).Dir, "--status-listen=127.0.0.1:0",
	}, func(string) string { return "" }, io.Discard)
	require.NoError(t, err)
	log := logrus.New()
	log.SetOutput(io.Discard)
	kube := fake.NewSimpleClientset(&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "w1"},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.11"}}},
	})
	d := deps{kube: kube, log: log, newDatapath: func(c datapath.Config) (dataplane, error) {
		return &failingDatapath{fakeDatapath{cfg: c}}, nil
	}}
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), cfg, d) }()
	select {
	case err := <-done:
		require.ErrorIs(t, err, errBoom)
		require.ErrorContains(t, err, "datapath: boom")
	case <-time.After(30 * time.Second):
		t.Fatal("the agent kept running after its datapath failed")
	}
}
