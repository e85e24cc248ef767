package kubetest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The control plane mode runs what real kubelets need: the controller
// manager makes ServiceAccounts and publishes the root CA, ServiceAccount
// admission gives pods a token volume, and a node credential is authorised
// for its own Node only. (The kubernetes Service's endpoints need a
// non-loopback advertise address; the real lab covers them.)
func TestControlPlaneServesServiceAccountsAndNodeAuthorization(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler")
	}
	bin, err := BinDir()
	require.NoError(t, err)
	for _, b := range []string{"kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("%s missing in %s (make tools builds it)", b, bin)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := StartServer(ctx, Options{Dir: t.TempDir(), ControlPlane: true})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			s.dumpLogs(t)
		}
		require.NoError(t, s.Stop())
	})
	kc := s.Client
	require.Eventually(t, func() bool {
		_, err1 := kc.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		_, err2 := kc.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err1 == nil && err2 == nil
	}, time.Minute, 100*time.Millisecond, "kube-controller-manager made the default ServiceAccount and kube-root-ca.crt")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "example.invalid/x:1"}}},
	}
	created, err := kc.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	require.NoError(t, err)
	require.Equal(t, "default", created.Spec.ServiceAccountName)
	hasToken := false
	for _, v := range created.Spec.Volumes {
		hasToken = hasToken || (v.Projected != nil && len(v.Projected.Sources) > 0 && v.Projected.Sources[0].ServiceAccountToken != nil)
	}
	require.True(t, hasToken, "ServiceAccount admission added the token volume: %+v", created.Spec.Volumes)

	path, err := s.NodeKubeconfig("n1")
	require.NoError(t, err)
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	require.NoError(t, err)
	nc, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	_, err = nc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{})
	require.NoError(t, err, "a node may register itself")
	_, err = nc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}}, metav1.CreateOptions{})
	require.Error(t, err, "NodeRestriction refuses another node's object")
}
