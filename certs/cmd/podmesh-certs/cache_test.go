package main

import (
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestCacheSecretReachesTheCacheProxyOnly: the Secret cache-secret renders,
// mounted as a Secret volume, is the agents' cache config; its certificate
// (CN local-east) reads the cache through a cache proxy and is refused by
// the peers' proxy, whose allow-list holds peers only.
func TestCacheSecretReachesTheCacheProxyOnly(t *testing.T) {
	skipShort(t)
	h := newHarness(t)
	root := t.TempDir()
	east := h.mesh(root)
	cacheLn, cachePort := listenLoopback(t)
	peerLn, peerPort := listenLoopback(t)

	out := filepath.Join(root, "podmesh-cache.yaml")
	h.mustRun("cache-secret", "--dir", east.dir, "--endpoint", certs.ProxyEndpoint("127.0.0.1", cachePort), "--out", out)
	secret, err := readSecretFile(out)
	require.NoError(t, err)
	require.Equal(t, certs.CacheSecretName, secret.Metadata.Name)
	vol := filepath.Join(root, "var/lib/podmesh/cache")
	require.NoError(t, certs.WriteSecretVolume(vol, secret.Data))
	cfg, err := kvstore.LoadConfig(filepath.Join(vol, certs.CacheConfigKey), logrus.New())
	require.NoError(t, err)
	require.Equal(t, certs.LocalCN("east"), cfg.TLS.Certificates[0].Leaf.Subject.CommonName)

	e := startEtcd(t)
	_, err = e.Writer.Put(t.Context(), meshapi.CacheStatusKey("west"), "{}")
	require.NoError(t, err)
	tlsCfg, err := proxy.LoadServerTLS(east.serverCert(), east.serverKey(), east.caCert(), []string{certs.LocalCN("east")})
	require.NoError(t, err)
	p, err := proxy.Start(t.Context(), proxy.Config{Listener: cacheLn, TLS: tlsCfg, Client: e.CacheReader, Log: logrus.New()})
	require.NoError(t, err)
	t.Cleanup(p.Stop)
	startProxy(t, e, peerLn, east, []string{"remote-west"})

	cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	resp, err := cli.Get(t.Context(), meshapi.CacheStatusKey("west"))
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "the local credential reads the cache")
	_, err = cli.Get(t.Context(), meshapi.ClusterConfigKey("east"))
	require.ErrorContains(t, err, "permission denied", "and nothing else")

	peerCfg := *cfg
	peerCfg.Endpoints = []string{certs.ProxyEndpoint("127.0.0.1", peerPort)}
	require.Error(t, kvstore.ProbeTLS(t.Context(), &peerCfg), "the peers' proxy refuses the local credential")
}
