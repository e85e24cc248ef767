package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestServerServesItsCacheToLocalAgentsOnly runs clustermesh-apiserver with
// a remote configured: it mirrors the remote into its cache, serves it on
// the cache listener to the local agents' CN, and its peers' proxy refuses
// the cache prefix (and the local CN).
func TestServerServesItsCacheToLocalAgentsOnly(t *testing.T) {
	h := newHarness(t)
	west := cmt.StartRemote(t, "west", 9, "10.9.0.0/16")
	west.PutNode(t, "w1", "192.168.9.1", "10.9.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, west)
	h.cfg.ClusterMeshConfig = dir.Dir
	h.cfg.CacheListen = "127.0.0.1:0"
	h.cfg.CacheAllowedClients = []string{certs.LocalCN(cluster)}
	h.start(t)
	select {
	case <-h.srv.Cache().Synced():
	case <-time.After(waitFor):
		t.Fatal("cache not synced")
	}

	ctx := t.Context()
	local := (&proxytest.Env{PKI: h.pki, Endpoint: "https://" + h.srv.CacheAddr()}).Client(t, certs.LocalCN(cluster))
	resp, err := local.Get(ctx, meshapi.CacheShardKey("west", 0, 1))
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	shard, err := meshapi.DecodeCacheShard(resp.Kvs[0].Value)
	require.NoError(t, err)
	require.Contains(t, shard.Entries, meshapi.NodeKey("west", "w1"), "the remote's node is in the cache")
	_, err = local.Get(ctx, meshapi.ClusterConfigKey(cluster))
	require.ErrorContains(t, err, "permission denied", "the cache listener serves the cache only")

	peer := (&proxytest.Env{PKI: h.pki, Endpoint: "https://" + h.srv.ProxyAddr()}).Client(t, peerCN)
	_, err = peer.Get(ctx, meshapi.CacheRoot, clientv3.WithPrefix())
	require.Equal(t, codes.PermissionDenied, status.Code(err), "peers never read the cache: %v", err)

	localOnPeer := (&proxytest.Env{PKI: h.pki, Endpoint: "https://" + h.srv.ProxyAddr()}).Client(t, certs.LocalCN(cluster))
	gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = localOnPeer.Get(gctx, meshapi.ClusterConfigKey(cluster))
	require.Error(t, err, "the local agents' certificate is not a peer's")
}
