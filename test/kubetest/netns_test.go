package kubetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestStartServerInsideANetworkNamespace(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := "podmesh-kt-" + hex.EncodeToString(suffix)
	require.NoError(t, exec.Command("ip", "netns", "add", name).Run())
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	require.NoError(t, exec.Command("ip", "-n", name, "link", "set", "lo", "up").Run())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := StartServer(ctx, Options{Dir: t.TempDir(), NetNSPath: "/var/run/netns/" + name, BindAddress: netip.MustParseAddr("127.0.0.1")})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Stop()) })

	_, err = s.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
	require.NoError(t, err, "the host-namespace client reaches the API server through the namespace")

	// The same address in the host namespace is not the API server: nothing
	// listens on that port here, so the server really runs in the namespace.
	conn, err := net.DialTimeout("tcp", s.URL[len("https://"):], time.Second)
	if err == nil {
		conn.Close()
		t.Logf("note: something in the host namespace listens on %s too", s.URL)
	} else {
		require.ErrorContains(t, err, "refused")
	}
}
