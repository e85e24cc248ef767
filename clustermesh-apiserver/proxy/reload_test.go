package proxy_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
)

// writeAtomically replaces path the way a Secret volume update does.
func writeAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, data, 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

func canRead(ctx context.Context, endpoint string, pki *proxytest.PKI, t *testing.T) bool {
	c, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, TLS: pki.ClientTLS(t, pki.IssueClient(t, peer)),
		DialTimeout: time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		return false
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = c.Get(rctx, "podmesh/v1/x")
	return err == nil
}

func TestRotatedCertificatesServeNewConnections(t *testing.T) {
	skipShort(t)
	env := proxytest.Start(t, peer)
	ctx := t.Context()
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	install := func(pki *proxytest.PKI) {
		writeAtomically(t, certFile, pki.Server.CertPEM)
		writeAtomically(t, keyFile, pki.Server.KeyPEM)
		writeAtomically(t, caFile, pki.CA.CertPEM)
	}
	oldPKI, newPKI := proxytest.NewPKI(t), proxytest.NewPKI(t)
	install(oldPKI)

	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	hook := logtest.NewLocal(log)
	cfg, err := proxy.ReloadingServerTLS(certFile, keyFile, caFile, []string{peer}, log)
	require.NoError(t, err)
	p, err := proxy.Start(ctx, proxy.Config{Listen: "127.0.0.1:0", TLS: cfg, Client: env.Etcd.Reader, Log: log})
	require.NoError(t, err)
	t.Cleanup(p.Stop)
	endpoint := "https://" + p.Addr()

	require.True(t, canRead(ctx, endpoint, oldPKI, t), "the first certificates work")
	require.False(t, canRead(ctx, endpoint, newPKI, t), "the next CA is not trusted yet")

	install(newPKI)
	require.Eventually(t, func() bool { return canRead(ctx, endpoint, newPKI, t) }, 30*time.Second, 50*time.Millisecond,
		"new connections use the rotated certificate and CA")
	require.False(t, canRead(ctx, endpoint, oldPKI, t), "peers of the old CA are refused")

	// A broken update keeps the working configuration.
	writeAtomically(t, caFile, []byte("garbage"))
	require.Eventually(t, func() bool {
		canRead(ctx, endpoint, newPKI, t) // a new connection makes the proxy look at the files
		for _, e := range hook.AllEntries() {
			if e.Message == "Changed TLS files do not load; keeping the previous ones" {
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond, "the broken files were seen")
	require.True(t, canRead(ctx, endpoint, newPKI, t), "and the previous configuration still serves")
}
