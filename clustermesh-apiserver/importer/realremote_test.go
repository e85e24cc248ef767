package importer_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/podmesh/podmesh/clustermesh-apiserver/importer"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	"github.com/podmesh/podmesh/clustermesh-apiserver/server"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
)

// TestRealClusterMeshAPIServerAsRemote reads a real clustermesh-apiserver
// (embedded etcd, read-only mTLS proxy, Kubernetes sync) as the remote
// "west". To keep the test to one kube-apiserver, west syncs from the same
// kube-apiserver the importer ("east") writes into. What west publishes for
// an exported Service decides what must happen: with the serviceExports
// capability (service format 2) the Service is imported; without it (an
// exporter that publishes every Service) nothing is, and status says why.
func TestRealClusterMeshAPIServerAsRemote(t *testing.T) {
	k := importer.StartKube(t)
	ctx := context.Background()
	k.Namespace(t, "shop")
	_, err := k.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = k.Client.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.2.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(80)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = k.MCS().MulticlusterV1beta1().ServiceExports("shop").Create(ctx, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}}, metav1.CreateOptions{})
	require.NoError(t, err)

	// west: a real clustermesh-apiserver that admits remote-east.
	dir := t.TempDir()
	pki := proxytest.NewPKI(t)
	require.NoError(t, pki.Server.WriteFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), true))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), pki.CA.CertPEM, 0o644))
	cfg, err := server.ParseFlags([]string{
		"--cluster-name=west", "--cluster-id=2", "--pod-cidrs=10.2.0.0/16",
		"--listen=127.0.0.1:0", "--health-listen=127.0.0.1:0",
		"--tls-cert=" + filepath.Join(dir, "tls.crt"), "--tls-key=" + filepath.Join(dir, "tls.key"),
		"--tls-client-ca=" + filepath.Join(dir, "ca.crt"), "--allowed-peers=remote-east",
		"--data-dir=" + filepath.Join(dir, "data"),
	}, io.Discard)
	require.NoError(t, err)
	cfg.UnsafeNoFsync = true
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	west, err := server.New(cfg, k.Config, log)
	require.NoError(t, err)
	wctx, stopWest := context.WithCancel(ctx)
	westDone := make(chan error, 1)
	go func() { westDone <- west.Run(wctx, prometheus.NewRegistry()) }()
	t.Cleanup(func() {
		stopWest()
		require.NoError(t, <-westDone)
	})
	select {
	case <-west.Ready():
	case err := <-westDone:
		t.Fatalf("west's clustermesh-apiserver stopped: %v", err)
	case <-time.After(importer.WaitFor):
		t.Fatal("west's clustermesh-apiserver never became ready")
	}

	// east's config directory holds west's file, as podmesh-certs connect
	// renders it.
	clientKP := pki.IssueClient(t, "remote-east")
	meshDir := importer.ConfigDir(t.TempDir())
	require.NoError(t, clientKP.WriteFiles(filepath.Join(string(meshDir), "west.crt"), filepath.Join(string(meshDir), "west.key"), true))
	require.NoError(t, os.WriteFile(filepath.Join(string(meshDir), "west.ca.crt"), pki.CA.CertPEM, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(string(meshDir), "west"),
		kvstoretest.ClientYAML("https://"+west.ProxyAddr(), "west.ca.crt", "west.crt", "west.key"), 0o600))

	imp, _ := importer.RunImporter(t, k, meshDir, nil)
	var st importer.ClusterStatus
	require.Eventually(t, func() bool {
		for _, c := range imp.Status().Clusters {
			if c.Cluster == "west" && c.Synced && c.Connected {
				st = c
				return true
			}
		}
		return false
	}, importer.WaitFor, 50*time.Millisecond, "the importer reads west through its proxy")

	if st.Note != "" {
		// An exporter without format 2: nothing of it is imported.
		assert.Contains(t, st.Note, "service format 1")
		assert.Zero(t, st.Services)
		_, err := k.MCS().MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "a format-1 remote's Service is not imported: %v", err)
		t.Log("west publishes service format 1: checked that nothing is imported")
		return
	}
	require.Eventually(t, func() bool {
		si, err := k.MCS().MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && len(si.Status.Clusters) == 1 && si.Status.Clusters[0].Cluster == "west" &&
			assert.ObjectsAreEqual(map[string]bool{"10.2.0.7": true}, importer.AddrsOf(k.SlicesOf(t, "shop", "web", "west")))
	}, importer.WaitFor, 50*time.Millisecond, "west's exported Service is imported")
	t.Log("west publishes service format 2: checked the import")
}
