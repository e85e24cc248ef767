package server_test

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/etcdserver"
	"github.com/podmesh/podmesh/clustermesh-apiserver/importer"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestImporterReadsTheRemotesThroughTheCache runs clustermesh-apiserver
// with the cache (its default) and two remotes, each a real embedded etcd
// behind a real read-only proxy: the importer gets their services from the
// cache's sessions, so each remote proxy serves exactly one client
// connection. An unreachable remote keeps its imports and the importer's
// status says why; a removed file withdraws the remote's imports. The
// remotes' services are in no key the local agents or the peers can read.
func TestImporterReadsTheRemotesThroughTheCache(t *testing.T) {
	h := newHarness(t)
	h.asServer = h.kube.Config // the importer writes ServiceImports, Services, slices
	ctx := t.Context()
	_, err := h.k.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{})
	require.NoError(t, err)

	west := startRemoteProxy(t, "west", 2, "10.2.0.0/16")
	south := startRemoteProxy(t, "south", 3, "10.3.0.0/16")
	west.export(t, "10.2.0.10", "10.2.0.11")
	south.export(t, "10.3.0.10")
	dir := cmt.NewConfigDir(t)
	files := west.files(t)
	for k, v := range south.files(t) {
		files[k] = v
	}
	dir.Set(t, files)
	h.cfg.ClusterMeshConfig = dir.Dir
	h.cfg.CacheListen = "127.0.0.1:0"
	h.cfg.CacheAllowedClients = []string{certs.LocalCN(cluster)}
	h.start(t)

	addrs := func(from string) map[string]bool { return sliceAddrs(t, h, "shop", "web", from) }
	require.Eventually(t, func() bool {
		si, err := h.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && len(si.Status.Clusters) == 2 && len(addrs("west")) == 2 && len(addrs("south")) == 1
	}, waitFor, 50*time.Millisecond, "imports of west and south never appeared")
	assert.Equal(t, map[string]bool{"10.2.0.10": true, "10.2.0.11": true}, addrs("west"))

	// One connection per remote proxy: the cache's. (Without the cache's
	// feed the importer would hold a second one.)
	for _, r := range []*remoteProxy{west, south} {
		assert.Equal(t, int64(1), r.conns.open.Load(), "client connections at %s's proxy", r.name)
	}

	// What the local agents can read holds no service of anyone.
	agent := (&proxytest.Env{PKI: h.pki, Endpoint: "https://" + h.srv.CacheAddr()}).Client(t, certs.LocalCN(cluster))
	resp, err := agent.Get(ctx, etcdserver.CachePrefix, clientv3.WithPrefix())
	require.NoError(t, err)
	require.NotEmpty(t, resp.Kvs, "the agents' cache holds the remotes")
	for _, kv := range resp.Kvs {
		assert.NotContains(t, string(kv.Key), "services", "cache key")
		assert.NotContains(t, string(kv.Value), meshapi.ServicesPrefix, "value of %s", kv.Key)
	}
	// Nor does any key of the local etcd: the importer's input is never
	// written there, so a peer has nothing of the remotes to read.
	for _, prefix := range []string{meshapi.Root, etcdserver.CachePrefix} {
		all, err := h.srv.Etcd().Writer.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		require.NoError(t, err)
		for _, kv := range all.Kvs {
			for _, remote := range []string{"west", "south"} {
				assert.False(t, strings.HasPrefix(string(kv.Key), meshapi.ServicesClusterPrefix(remote)), "local etcd holds %s", kv.Key)
			}
		}
	}
	peer := (&proxytest.Env{PKI: h.pki, Endpoint: "https://" + h.srv.ProxyAddr()}).Client(t, peerCN)
	_, err = peer.Get(ctx, etcdserver.CachePrefix, clientv3.WithPrefix())
	require.Equal(t, codes.PermissionDenied, status.Code(err), "peers never read the cache: %v", err)
	peerView, err := peer.Get(ctx, meshapi.ServicesPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	require.NoError(t, err)
	for _, kv := range peerView.Kvs {
		assert.True(t, strings.HasPrefix(string(kv.Key), meshapi.ServicesClusterPrefix(cluster)), "a peer reads %s", kv.Key)
	}

	// west unreachable: its imports stay, and the importer says why.
	west.fwd.Cut()
	imp := h.srv.Importer()
	require.Eventually(t, func() bool { return !importStatus(imp, "west").Connected }, waitFor, 50*time.Millisecond)
	st := importStatus(imp, "west")
	assert.True(t, st.Synced)
	assert.NotEmpty(t, st.Phase, "status says why west is not connected")
	require.NotNil(t, st.DataAgeSeconds)
	assert.Equal(t, map[string]bool{"10.2.0.10": true, "10.2.0.11": true}, addrs("west"), "an unreachable remote keeps its imports")

	// south's file removed: its imports go; west's stay.
	files = dir.Files()
	for k := range files {
		if strings.HasPrefix(k, "south") {
			delete(files, k)
		}
	}
	start := time.Now()
	dir.Set(t, files)
	require.Eventually(t, func() bool { return len(addrs("south")) == 0 }, waitFor, 10*time.Millisecond, "south's slices were never withdrawn")
	t.Logf("south's file removed → its slices gone after %s (measured, not asserted)", time.Since(start).Round(time.Millisecond))
	require.Eventually(t, func() bool {
		si, err := h.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && assert.ObjectsAreEqual([]mcsv1beta1.ClusterStatus{{Cluster: "west"}}, si.Status.Clusters)
	}, waitFor, 50*time.Millisecond)
	assert.Equal(t, map[string]bool{"10.2.0.10": true, "10.2.0.11": true}, addrs("west"))

	// west back: its change made while it was unreachable arrives.
	west.export(t, "10.2.0.11", "10.2.0.12")
	west.fwd.Restore(t)
	require.Eventually(t, func() bool {
		return assert.ObjectsAreEqual(map[string]bool{"10.2.0.11": true, "10.2.0.12": true}, addrs("west"))
	}, waitFor, 50*time.Millisecond, "west's new endpoints were never imported: %v", addrs("west"))
	require.Eventually(t, func() bool { return west.conns.open.Load() == 1 }, waitFor, 50*time.Millisecond, "west's proxy serves one connection after the reconnect")
}

func importStatus(imp *importer.Importer, name string) importer.ClusterStatus {
	for _, c := range imp.Status().Clusters {
		if c.Cluster == name {
			return c
		}
	}
	return importer.ClusterStatus{}
}

// sliceAddrs lists the addresses of the slices imported from cluster for
// namespace/name.
func sliceAddrs(t *testing.T, h *harness, namespace, name, from string) map[string]bool {
	t.Helper()
	sel := fmt.Sprintf("%s=%s,%s=%s", importer.LabelMCSServiceName, name, importer.LabelSourceCluster, from)
	l, err := h.k.DiscoveryV1().EndpointSlices(namespace).List(t.Context(), metav1.ListOptions{LabelSelector: sel})
	require.NoError(t, err)
	out := map[string]bool{}
	for _, s := range l.Items {
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				out[a] = ep.Conditions.Ready == nil || *ep.Conditions.Ready
			}
		}
	}
	return out
}

// remoteProxy is a remote cluster as its peers reach it: an embedded etcd
// (auth on) with its published state, a read-only proxy that counts the
// client connections it holds, and a forwarder in front that can be cut.
type remoteProxy struct {
	name  string
	cc    meshapi.ClusterConfig
	etcd  *etcdserver.Server
	pki   *proxytest.PKI
	conns *countingListener
	fwd   *kvstoretest.Forwarder
}

// remoteCN is the client certificate name the local cluster presents.
const remoteCN = "remote-east"

func startRemoteProxy(t *testing.T, name string, id uint32, cidr string) *remoteProxy {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e := proxytest.StartEtcd(t)
	pki := proxytest.NewPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cl := &countingListener{Listener: ln}
	p, err := proxy.Start(t.Context(), proxy.Config{Listener: cl, TLS: pki.ServerTLS(t, remoteCN), Client: e.Reader, Metrics: proxy.NewMetrics(), Log: log})
	require.NoError(t, err)
	t.Cleanup(p.Stop)
	r := &remoteProxy{name: name, etcd: e, pki: pki, conns: cl, fwd: kvstoretest.StartForwarder(t, p.Addr()),
		cc: meshapi.ClusterConfig{Name: name, ID: id, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}, ServiceCIDRs: []netip.Prefix{},
			Capabilities: meshapi.Capabilities{Endpoints: true, Services: true, ServiceExports: true}, FormatVersion: meshapi.FormatVersion}}
	r.put(t, meshapi.ClusterConfigKey(name), r.cc)
	r.putRaw(t, meshapi.HeartbeatKey(name), meshapi.FormatTime(time.Now()))
	for _, k := range meshapi.SyncedKinds {
		r.putRaw(t, meshapi.SyncedKey(name, k), meshapi.FormatTime(time.Now()))
	}
	return r
}

// export publishes shop/web (ClusterSetIP, port 80) with the given
// endpoint IPs.
func (r *remoteProxy) export(t *testing.T, ips ...string) {
	t.Helper()
	svc := meshapi.Service{Cluster: r.name, ClusterID: r.cc.ID, Namespace: "shop", Name: "web", Type: meshapi.ServiceTypeClusterSetIP,
		ExportTime: time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC), SessionAffinity: "None", IPFamilies: []string{"IPv4"},
		Ports: []meshapi.ServicePort{{Name: "http", Port: 80, Protocol: "TCP"}}, Endpoints: []meshapi.ServiceEndpoint{}}
	for _, ip := range ips {
		svc.Endpoints = append(svc.Endpoints, meshapi.ServiceEndpoint{IP: netip.MustParseAddr(ip), Node: "n1", Ready: true, Serving: true})
	}
	r.put(t, meshapi.ServiceKey(r.name, "shop", "web"), svc)
}

func (r *remoteProxy) put(t *testing.T, key string, v any) {
	t.Helper()
	b, err := meshapi.Encode(v)
	require.NoError(t, err)
	r.putRaw(t, key, string(b))
}

func (r *remoteProxy) putRaw(t *testing.T, key, value string) {
	t.Helper()
	_, err := r.etcd.Writer.Put(t.Context(), key, value)
	require.NoError(t, err)
}

// files are the remote's entry in the local cluster's config directory.
func (r *remoteProxy) files(t *testing.T) map[string][]byte {
	t.Helper()
	kp := r.pki.IssueClient(t, remoteCN)
	n := r.name
	return map[string][]byte{
		n:             kvstoretest.ClientYAML("https://"+r.fwd.Addr, n+"-ca.crt", n+".crt", n+".key"),
		n + ".crt":    kp.CertPEM,
		n + ".key":    kp.KeyPEM,
		n + "-ca.crt": r.pki.CA.CertPEM,
	}
}

// countingListener counts the connections it accepted that are still open.
type countingListener struct {
	net.Listener
	open atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
