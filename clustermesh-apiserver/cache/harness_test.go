package cache_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/cache"
	"github.com/podmesh/podmesh/clustermesh-apiserver/etcdserver"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	"github.com/podmesh/podmesh/pkg/clustermesh"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

const (
	localName = "local"
	localID   = 1
	waitLong  = 30 * time.Second
)

var (
	localCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}
	fastTiming = cmt.FastTiming
)

// replica is one clustermesh-apiserver's cache: its embedded etcd, the
// cache mirroring the remotes of dir, and the cache proxy local agents
// read, plus the peers' proxy (which must never serve the cache).
type replica struct {
	dataDir   string
	etcd      *etcdserver.Server
	cache     *cache.Cache
	proxy     *proxy.Proxy
	peerProxy *proxy.Proxy
	cancel    context.CancelFunc
	done      chan struct{}
}

// tier is one local cluster: the remotes' config directory, a PKI for its
// proxies and the address local agents dial.
type tier struct {
	dir  *cmt.ConfigDir
	pki  *proxytest.PKI
	addr string
	log  logrus.FieldLogger
}

func newTier(t *testing.T, remotes ...*cmt.Remote) *tier {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd servers")
	}
	dir := cmt.NewConfigDir(t)
	for _, r := range remotes {
		dir.Add(t, r)
	}
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	log.SetOutput(cmt.LogWriter{TB: t})
	return &tier{dir: dir, pki: proxytest.NewPKI(t), addr: "127.0.0.1:0", log: log}
}

// start runs a replica on dataDir (a new one when empty), serving local
// agents on the tier's address (the same port across restarts, as a
// Service would).
func (tr *tier) start(t *testing.T, dataDir string) *replica {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	ctx, cancel := context.WithCancel(context.Background())
	e, err := etcdserver.Start(ctx, etcdserver.Config{DataDir: dataDir, UnsafeNoFsync: true, Log: tr.log, EtcdLog: zap.NewNop()})
	require.NoError(t, err)
	c, err := cache.New(cache.Options{
		Cluster: localName, ClusterID: localID, PodCIDRs: localCIDRs, ConfigDir: tr.dir.Dir, Etcd: e.Writer,
		SyncTimeout: 10 * time.Second, StatusInterval: 50 * time.Millisecond, Timing: fastTiming, Log: tr.log,
	})
	require.NoError(t, err)
	p, err := proxy.Start(ctx, proxy.Config{Listen: tr.addr, TLS: tr.pki.ServerTLS(t, certs.LocalCN(localName)), Client: e.CacheReader, Log: tr.log})
	require.NoError(t, err)
	tr.addr = p.Addr()
	pp, err := proxy.Start(ctx, proxy.Config{Listen: "127.0.0.1:0", TLS: tr.pki.ServerTLS(t, "remote-peer"), Client: e.Reader, DenyPrefixes: []string{meshapi.CacheRoot}, Log: tr.log})
	require.NoError(t, err)
	r := &replica{dataDir: dataDir, etcd: e, cache: c, proxy: p, peerProxy: pp, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := c.Run(ctx); err != nil {
			t.Errorf("cache run: %v", err)
		}
	}()
	t.Cleanup(r.stop)
	return r
}

// stop shuts the replica down (its data directory stays).
func (r *replica) stop() {
	if r.cancel == nil {
		return
	}
	r.proxy.Stop()
	r.peerProxy.Stop()
	r.cancel()
	<-r.done
	r.etcd.Close()
	r.cancel = nil
}

// waitSynced waits for the replica's canary.
func (r *replica) waitSynced(t *testing.T) {
	t.Helper()
	select {
	case <-r.cache.Synced():
	case <-time.After(waitLong):
		t.Fatal("cache not synced")
	}
}

// cacheKeys lists what the replica's etcd holds under the cache prefix.
func (r *replica) cacheKeys(t *testing.T) map[string]string {
	t.Helper()
	resp, err := r.etcd.Writer.Get(t.Context(), meshapi.CacheRoot, clientv3.WithPrefix())
	require.NoError(t, err)
	out := make(map[string]string)
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

// agent is a CacheMesh reading the tier's cache with the local credential.
type agent struct {
	*clustermesh.CacheMesh
	rec  *cmt.Recorder
	stop func()
}

func (tr *tier) startAgent(t *testing.T) *agent {
	t.Helper()
	return tr.startAgentTiming(t, "a", fastTiming)
}

// startAgentTiming starts an agent named name with timing.
func (tr *tier) startAgentTiming(t *testing.T, name string, timing clustermesh.Timing) *agent {
	t.Helper()
	dir := t.TempDir()
	ca, cert, key := tr.pki.WriteClientFiles(t, certs.LocalCN(localName))
	file := filepath.Join(dir, "cache.yaml")
	require.NoError(t, os.WriteFile(file, kvstoretest.ClientYAML("https://"+tr.addr, ca, cert, key), 0o600))
	rec := cmt.NewRecorder()
	m, err := clustermesh.NewCache(clustermesh.Options{
		LocalCluster: localName, LocalClusterID: localID, LocalPodCIDRs: localCIDRs,
		LocalTunnelIP: netip.MustParseAddr("192.168.0.1"), CacheFile: file, Desired: rec,
		SyncTimeout: time.Minute, Timing: timing, Log: tr.log.WithField("agent", name),
	})
	require.NoError(t, err)
	stop := cmt.Run(t, m.Run, waitLong)
	return &agent{CacheMesh: m, rec: rec, stop: stop}
}

// waitEntries waits until the agent's entries of cluster are want.
func (a *agent) waitEntries(t *testing.T, cluster string, want map[netip.Prefix]datapath.Entry) {
	t.Helper()
	deadline := time.After(waitLong)
	for {
		wake := a.rec.Wait()
		got := a.rec.Cluster(cluster)
		if equalEntries(got, want) {
			return
		}
		select {
		case <-wake:
		case <-deadline:
			require.Equal(t, want, got, "entries of %s", cluster)
			return
		}
	}
}

func equalEntries(a, b map[netip.Prefix]datapath.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for p, e := range a {
		if b[p] != e {
			return false
		}
	}
	return true
}

// remote returns the agent's status of one remote.
func (a *agent) remote(cluster string) (clustermesh.RemoteStatus, bool) {
	for _, r := range a.Status().Remotes {
		if r.Cluster == cluster {
			return r, true
		}
	}
	return clustermesh.RemoteStatus{}, false
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, waitLong, 20*time.Millisecond, what)
}

// want builds expected entries: pairs "prefix via tunnelIP".
func want(cluster string, id uint32, pairs ...string) map[netip.Prefix]datapath.Entry {
	out := make(map[netip.Prefix]datapath.Entry)
	for _, p := range pairs {
		prefix, via, _ := strings.Cut(p, " via ")
		pp := netip.MustParsePrefix(prefix)
		out[pp] = datapath.Entry{Prefix: pp, TunnelEndpoint: netip.MustParseAddr(via), ClusterID: id, Cluster: cluster}
	}
	return out
}

// startEast starts the remote "east" (ID 2, 10.2.0.0/16) with nodes e1..en
// (nodeName, nodeIP, nodeCIDR).
func startEast(t *testing.T, n int) *cmt.Remote {
	t.Helper()
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	for i := 1; i <= n; i++ {
		east.PutNode(t, nodeName(i), nodeIP(i), nodeCIDR(i))
	}
	return east
}

func nodeName(i int) string { return fmt.Sprintf("e%d", i) }
func nodeIP(i int) string   { return fmt.Sprintf("192.168.1.%d", i) }
func nodeCIDR(i int) string { return fmt.Sprintf("10.2.%d.0/24", i) }

func add(m map[netip.Prefix]datapath.Entry, cluster string, id uint32, pairs ...string) {
	maps.Copy(m, want(cluster, id, pairs...))
}

// cachedEntries decodes every shard among keys: wire key -> value.
func cachedEntries(t *testing.T, keys map[string]string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	for k, v := range keys {
		if !strings.HasPrefix(k, meshapi.CacheShardsPrefix) {
			continue
		}
		s, err := meshapi.DecodeCacheShard([]byte(v))
		require.NoError(t, err, k)
		for wk, raw := range s.Entries {
			require.NotContains(t, out, wk, "one shard per entry")
			out[wk] = string(raw)
		}
	}
	return out
}
