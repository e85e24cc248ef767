package kubetest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestStartServesTheKubernetesAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	s := Start(t)
	ctx := context.Background()

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDR: "10.1.0.0/24", PodCIDRs: []string{"10.1.0.0/24"}}}
	_, err := s.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	require.NoError(t, err)

	// The kubeconfig file works on its own, as a component would load it.
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	require.NoError(t, err)
	c, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	got, err := c.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, []string{"10.1.0.0/24"}, got.Spec.PodCIDRs)

	// Bootstrap objects other tests rely on exist (default namespace, priority classes).
	_, err = s.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
	require.NoError(t, err)
	_, err = s.Client.SchedulingV1().PriorityClasses().Get(ctx, "system-node-critical", metav1.GetOptions{})
	require.NoError(t, err)
}

func TestBinDirFindsTheModuleRoot(t *testing.T) {
	t.Setenv("PODMESH_BIN", "")
	dir, err := BinDir()
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(filepath.Dir(dir), "go.mod"))
	require.NoError(t, err)
	require.Equal(t, "bin", filepath.Base(dir))
}
