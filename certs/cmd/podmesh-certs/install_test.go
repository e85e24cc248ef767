package main

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/server"
	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/test/kubetest"
)

// waitLimit bounds how long a condition may take before the test fails; it
// is a guard against a hang, not a performance assertion.
const waitLimit = 90 * time.Second

// freeLoopbackPort returns a port that was free a moment ago. The proxy's
// address must be known before `connect` renders it into the Secret, and
// the clustermesh-apiserver listens itself.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return port
}

// TestInstallPath follows docs/install.md for one direction of a mesh,
// cluster east serving cluster west, with the real parts:
//
//   - east: a real kube-apiserver with one Node, and the real
//     clustermesh-apiserver (server package, flags parsed by its own parser),
//     its TLS files read from a Secret volume rendered by `server-secret`,
//     its --allowed-peers from `podmesh-certs allowed-peers`;
//   - west: the agent's mesh (pkg/clustermesh, what podmesh-agent runs)
//     reading the Secret volume rendered by `connect`.
//
// It passes when west's agent reports east ready with east's node and
// wants a route to the node's pod CIDR via its InternalIP.
func TestInstallPath(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver, etcd and clustermesh-apiserver")
	}
	ctx := t.Context()
	kube := kubetest.Start(t)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "e1"}, Spec: corev1.NodeSpec{PodCIDR: "10.1.1.0/24", PodCIDRs: []string{"10.1.1.0/24"}}}
	node, err := kube.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	require.NoError(t, err)
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.11"}}
	_, err = kube.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	require.NoError(t, err)

	// Step 1-3 of docs/install.md, for east.
	h := newHarness(t)
	root := t.TempDir()
	east := layout{filepath.Join(root, "pki/east")}
	port := freeLoopbackPort(t)
	h.mustRun("init", "--dir", east.dir, "--cluster", "east")
	h.mustRun("server", "--dir", east.dir, "--ip", "127.0.0.1")
	h.mustRun("peer", "--dir", east.dir, "--peer", "west")
	meshOut := filepath.Join(root, "west-clustermesh.yaml")
	h.mustRun("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--out", meshOut)
	tlsOut := filepath.Join(root, "east-apiserver-tls.yaml")
	h.mustRun("server-secret", "--dir", east.dir, "--out", tlsOut)
	h.mustRun("allowed-peers", "--dir", east.dir)
	allowed := strings.TrimSpace(h.stdout.String())
	require.Equal(t, "remote-west", allowed)

	// Both rendered Secrets are valid Kubernetes objects: store them and use
	// what the API returns, which is what the kubelet mounts. (Both are
	// stored in east's API; in a real install the clustermesh Secret goes to
	// west.)
	_, err = kube.Client.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: defaultNamespace}}, metav1.CreateOptions{})
	require.NoError(t, err)
	tlsSecret := storeSecret(t, kube, tlsOut)
	require.Equal(t, corev1.SecretTypeTLS, tlsSecret.Type)

	// east's clustermesh-apiserver, configured as the Deployment does.
	tlsDir := filepath.Join(root, "east/etc/podmesh/tls")
	require.NoError(t, certs.WriteSecretVolume(tlsDir, tlsSecret.Data))
	cfg, err := server.ParseFlags([]string{
		"--cluster-name=east", "--cluster-id=1", "--pod-cidrs=10.1.0.0/16",
		"--listen=127.0.0.1:" + strconv.Itoa(port),
		"--tls-cert=" + filepath.Join(tlsDir, "tls.crt"),
		"--tls-key=" + filepath.Join(tlsDir, "tls.key"),
		"--tls-client-ca=" + filepath.Join(tlsDir, "ca.crt"),
		"--allowed-peers=" + allowed,
		"--data-dir=" + filepath.Join(root, "east/data"),
		"--health-listen=127.0.0.1:0",
	}, io.Discard)
	require.NoError(t, err)
	cfg.UnsafeNoFsync = true
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	srv, err := server.New(cfg, kube.Config, log.WithField("cluster", "east"))
	require.NoError(t, err)
	srvCtx, stopSrv := context.WithCancel(context.Background())
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Run(srvCtx, prometheus.NewRegistry()) }()
	t.Cleanup(func() {
		stopSrv()
		<-srvDone
	})
	select {
	case <-srv.Ready():
	case err := <-srvDone:
		t.Fatalf("clustermesh-apiserver stopped before it was ready: %v", err)
	case <-time.After(waitLimit):
		t.Fatal("clustermesh-apiserver not ready")
	}

	// west's agent mesh, reading the Secret as the kubelet mounts it.
	meshSecret := storeSecret(t, kube, meshOut)
	vol := filepath.Join(root, "west/var/lib/podmesh/clustermesh")
	require.NoError(t, certs.WriteSecretVolume(vol, meshSecret.Data))
	rec := clustermeshtest.NewRecorder()
	mesh, err := clustermesh.New(clustermesh.Options{
		LocalCluster:   "west",
		LocalClusterID: 2,
		LocalPodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")},
		LocalTunnelIP:  netip.MustParseAddr("192.0.2.21"),
		ConfigDir:      vol,
		Desired:        rec,
		Log:            log.WithField("cluster", "west"),
	})
	require.NoError(t, err)
	meshCtx, stopMesh := context.WithCancel(context.Background())
	meshDone := make(chan error, 1)
	go func() { meshDone <- mesh.Run(meshCtx) }()
	t.Cleanup(func() {
		stopMesh()
		<-meshDone
	})

	var last clustermesh.RemoteStatus
	require.Eventually(t, func() bool {
		st := mesh.Status()
		if len(st.Remotes) != 1 {
			return false
		}
		last = st.Remotes[0]
		return last.Ready && last.Synced && last.Nodes == 1
	}, waitLimit, 50*time.Millisecond, "west's agent never saw east ready: %+v", &last)
	require.Equal(t, "east", last.Cluster)
	require.Equal(t, uint32(1), last.ClusterID)
	require.Empty(t, last.LastError)

	want := datapath.Entry{
		Prefix:         netip.MustParsePrefix("10.1.1.0/24"),
		TunnelEndpoint: netip.MustParseAddr("192.0.2.11"),
		ClusterID:      1,
		Cluster:        "east",
	}
	require.Eventually(t, func() bool {
		got, ok := rec.Cluster("east")[want.Prefix]
		return ok && got == want
	}, waitLimit, 50*time.Millisecond, "west wants %s", want)
}

// storeSecret creates the Secret of a manifest podmesh-certs wrote, with
// strict field validation, and returns it as the API server stores it.
func storeSecret(t *testing.T, kube *kubetest.Server, path string) *corev1.Secret {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var s corev1.Secret
	require.NoError(t, yaml.UnmarshalStrict(raw, &s), path)
	_, err = kube.Client.CoreV1().Secrets(s.Namespace).Create(t.Context(), &s, metav1.CreateOptions{FieldValidation: "Strict"})
	require.NoError(t, err, path)
	got, err := kube.Client.CoreV1().Secrets(s.Namespace).Get(t.Context(), s.Name, metav1.GetOptions{})
	require.NoError(t, err)
	return got
}
