package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	"github.com/podmesh/podmesh/clustermesh-apiserver/server"
	"github.com/podmesh/podmesh/pkg/mcscrd"
	"github.com/podmesh/podmesh/test/kubetest"
)

const (
	cluster   = "east"
	clusterID = 7
	peerCN    = "remote-west"
	waitFor   = 60 * time.Second
)

// harness runs a real kube-apiserver and clustermesh-apiserver in-process.
type harness struct {
	kube *kubetest.Server
	k    kubernetes.Interface
	mcs  mcsclient.Interface
	// asServer is the REST config clustermesh-apiserver runs with: the
	// test's identity exporterUser, which holds exactly exporterRules.
	asServer *rest.Config
	pki      *proxytest.PKI
	cfg      server.Config
	srv      *server.Server
	cancel   context.CancelFunc
	done     chan error
	clients  []*clientv3.Client
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("starts kube-apiserver, etcd and clustermesh-apiserver")
	}
	kube := kubetest.Start(t)
	require.NoError(t, mcscrd.Install(t.Context(), kube.Config))
	mcs, err := mcsclient.NewForConfig(kube.Config)
	require.NoError(t, err)
	asServer := grantExporterRBAC(t, kube)
	pki := proxytest.NewPKI(t)
	dir := t.TempDir()
	cfg := server.Config{
		ClusterName: cluster, ClusterID: clusterID,
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00:1::/48")},
		Listen:       "127.0.0.1:0",
		HealthListen: "127.0.0.1:0", EtcdListenClient: "127.0.0.1:0",
		TLSCert: filepath.Join(dir, "tls.crt"), TLSKey: filepath.Join(dir, "tls.key"), TLSClientCA: filepath.Join(dir, "ca.crt"),
		AllowedPeers: []string{peerCN}, DataDir: filepath.Join(dir, "data"),
		SyncWorkers: 4, UnsafeNoFsync: true,
	}
	require.NoError(t, pki.Server.WriteFiles(cfg.TLSCert, cfg.TLSKey, true))
	require.NoError(t, os.WriteFile(cfg.TLSClientCA, pki.CA.CertPEM, 0o644))
	h := &harness{kube: kube, k: kube.Client, mcs: mcs, asServer: asServer, pki: pki, cfg: cfg}
	t.Cleanup(func() {
		for _, c := range h.clients {
			c.Close()
		}
		if h.cancel != nil {
			h.cancel()
			<-h.done
		}
	})
	return h
}

// start runs clustermesh-apiserver and waits until it is ready.
func (h *harness) start(t *testing.T) {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	log.SetOutput(testLogWriter{t})
	s, err := server.New(h.cfg, h.asServer, log)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	for _, c := range s.Collectors() {
		require.NoError(t, reg.Register(c))
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.srv, h.cancel, h.done = s, cancel, make(chan error, 1)
	go func() { h.done <- s.Run(ctx, prometheus.Gatherers{reg, prometheus.DefaultGatherer}) }()
	select {
	case <-s.Ready():
	case err := <-h.done:
		h.cancel = nil
		t.Fatalf("clustermesh-apiserver stopped before it was ready: %v", err)
	case <-time.After(waitFor):
		t.Fatal("clustermesh-apiserver not ready")
	}
	// Keep the proxy's port across restarts, as a Service would.
	h.cfg.Listen = s.ProxyAddr()
}

// stop shuts clustermesh-apiserver down and checks it stopped cleanly.
func (h *harness) stop(t *testing.T) {
	t.Helper()
	h.cancel()
	require.NoError(t, <-h.done, "clean shutdown")
	h.cancel = nil
}

// client is an etcd client that reaches the proxy as a remote peer.
func (h *harness) client(t *testing.T) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"https://" + h.srv.ProxyAddr()},
		TLS:         h.pki.ClientTLS(t, h.pki.IssueClient(t, peerCN)),
		DialTimeout: 5 * time.Second,
	})
	require.NoError(t, err)
	h.clients = append(h.clients, c)
	return c
}

// exporterRules is the Kubernetes RBAC clustermesh-apiserver needs, as
// docs/apiserver.md lists it; the harness runs the server with exactly this.
var exporterRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"nodes", "pods", "services"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"multicluster.x-k8s.io"}, Resources: []string{"serviceexports"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"multicluster.x-k8s.io"}, Resources: []string{"serviceexports/status"}, Verbs: []string{"patch"}},
}

const exporterUser = "system:serviceaccount:kube-system:clustermesh-apiserver"

// grantExporterRBAC binds exporterRules to exporterUser and returns a
// config that acts as that user.
func grantExporterRBAC(t *testing.T, kube *kubetest.Server) *rest.Config {
	t.Helper()
	ctx := t.Context()
	_, err := kube.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "clustermesh-apiserver"}, Rules: exporterRules}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = kube.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "clustermesh-apiserver"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "clustermesh-apiserver"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: exporterUser}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	c := rest.CopyConfig(kube.Config)
	c.Impersonate = rest.ImpersonationConfig{UserName: exporterUser}
	return c
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// value returns the value of key through c, "" when absent.
func value(ctx context.Context, c *clientv3.Client, key string) (string, error) {
	resp, err := c.Get(ctx, key)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// waitValue polls key through c until it holds want ("" = absent).
func waitValue(t *testing.T, c *clientv3.Client, key, want string) {
	t.Helper()
	deadline := time.After(waitFor)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var got string
	var err error
	for {
		got, err = value(t.Context(), c, key)
		if err == nil && got == want {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("key %s:\n got  %s (err %v)\n want %s", key, got, err, want)
		}
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, g.Write(&m))
	return m.GetGauge().GetValue()
}

func createNode(t *testing.T, k kubernetes.Interface, name string, internalIP string, podCIDRs ...string) {
	t.Helper()
	ctx := t.Context()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: podCIDRs}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
	}
	n, err := k.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	require.NoError(t, err)
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: internalIP}}
	_, err = k.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	require.NoError(t, err)
}

type podOpts struct {
	hostname, subdomain string
	hostNetwork         bool
}

func createPod(t *testing.T, k kubernetes.Interface, ns, name, node string, o podOpts, ips ...string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			NodeName: node, Hostname: o.hostname, Subdomain: o.subdomain, HostNetwork: o.hostNetwork,
			Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/pause"}},
		},
	}
	_, err := k.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{})
	require.NoError(t, err)
	if len(ips) > 0 {
		setPodIPs(t, k, ns, name, ips...)
	}
}

// setPodIPs writes status.podIP(s) as a kubelet would (none = clear them).
func setPodIPs(t *testing.T, k kubernetes.Interface, ns, name string, ips ...string) {
	t.Helper()
	require.NoError(t, patchPodIPs(t.Context(), k, ns, name, ips...))
}

func patchPodIPs(ctx context.Context, k kubernetes.Interface, ns, name string, ips ...string) error {
	podIPs := make([]map[string]string, 0, len(ips))
	for _, ip := range ips {
		podIPs = append(podIPs, map[string]string{"ip": ip})
	}
	status := map[string]any{"phase": "Running", "podIPs": podIPs, "podIP": nil}
	if len(ips) > 0 {
		status["podIP"] = ips[0]
	}
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return err
	}
	_, err = k.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("patch pod %s/%s status: %w", ns, name, err)
	}
	return nil
}

func deletePod(t *testing.T, k kubernetes.Interface, ns, name string) {
	t.Helper()
	zero := int64(0)
	require.NoError(t, k.CoreV1().Pods(ns).Delete(t.Context(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}))
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}
