package kubetest

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/internal/testutils"
)

func TestStartServerInsideANetworkNamespace(t *testing.T) {
	testutils.RequireRoot(t) // also skips under -short: it starts etcd and kube-apiserver
	ns := testutils.NewNetNS(t, "kt")
	require.NoError(t, ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := StartServer(ctx, Options{Dir: t.TempDir(), NetNSPath: ns.Path(), BindAddress: netip.MustParseAddr("127.0.0.1")})
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
