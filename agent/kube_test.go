package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/test/kubetest"
)

// TestAgentReadsItsNodeFromKubeAPIServer runs the agent's Kubernetes side
// against a real kube-apiserver through a kubeconfig file, as --kubeconfig
// does: the node's InternalIP becomes the tunnel source once it is set.
func TestAgentReadsItsNodeFromKubeAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs bin/kube-apiserver and bin/etcd (make tools)")
	}
	srv := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := srv.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "w1"},
		Spec:       corev1.NodeSpec{PodCIDR: "10.1.3.0/24", PodCIDRs: []string{"10.1.3.0/24", "fd00:1:0:3::/64"}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	cs, err := kubeClient(srv.Kubeconfig)
	require.NoError(t, err)
	dir := cmt.NewConfigDir(t)

	// The test plays the kubelet and reports the addresses; the agent
	// retries until the node has an InternalIP.
	go func() {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeExternalIP, Address: "203.0.113.7"}, {Type: corev1.NodeInternalIP, Address: "192.168.0.11"}}
		assert.Eventually(t, func() bool {
			_, err := srv.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			return err == nil
		}, 20*time.Second, 50*time.Millisecond)
	}()
	a := startAgent(t, cs, dir.Dir)
	require.Equal(t, "192.168.0.11", a.dp.cfg.LocalIP.String())

	got, err := srv.Client.CoreV1().Nodes().Get(ctx, "w1", metav1.GetOptions{})
	require.NoError(t, err)
	ln, err := nodeFromObject(got)
	require.NoError(t, err)
	require.Equal(t, "[10.1.3.0/24 fd00:1:0:3::/64]", fmt.Sprint(ln.PodCIDRs))
}
