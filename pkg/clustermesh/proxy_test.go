package clustermesh_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	"github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// proxyRemote is a remote cluster served the production way: embedded etcd
// with auth, written by its writer user, read through the read-only mTLS
// proxy that admits only allow-listed CNs.
type proxyRemote struct {
	env  *proxytest.Env
	name string
	id   uint32
}

func (r *proxyRemote) put(t *testing.T, key string, v any) {
	t.Helper()
	var s string
	switch v := v.(type) {
	case string:
		s = v
	default:
		b, err := meshapi.Encode(v)
		require.NoError(t, err)
		s = string(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := r.env.Etcd.Writer.Put(ctx, key, s)
	require.NoError(t, err)
}

func (r *proxyRemote) del(t *testing.T, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := r.env.Etcd.Writer.Delete(ctx, key)
	require.NoError(t, err)
}

func (r *proxyRemote) node(t *testing.T, name, ip string, cidrs ...string) {
	t.Helper()
	n := meshapi.Node{Cluster: r.name, ClusterID: r.id, Name: name, InternalIPs: []netip.Addr{mustAddr(ip)}}
	for _, c := range cidrs {
		n.PodCIDRs = append(n.PodCIDRs, mustPrefix(c))
	}
	r.put(t, meshapi.NodeKey(r.name, name), n)
}

// files is the Secret entry for this remote with a client certificate for cn.
func (r *proxyRemote) files(t *testing.T, cn string) map[string][]byte {
	t.Helper()
	kp := r.env.PKI.IssueClient(t, cn)
	return map[string][]byte{
		r.name:             kvstoretest.ClientYAML(r.env.Endpoint, r.name+"-ca.crt", r.name+".crt", r.name+".key"),
		r.name + ".crt":    kp.CertPEM,
		r.name + ".key":    kp.KeyPEM,
		r.name + "-ca.crt": r.env.PKI.CA.CertPEM,
	}
}

func startProxyRemote(t *testing.T, name string, id uint32, cidr string) *proxyRemote {
	t.Helper()
	r := &proxyRemote{env: proxytest.Start(t, "remote-local"), name: name, id: id}
	r.put(t, meshapi.ClusterConfigKey(name), meshapi.ClusterConfig{Name: name, ID: id, PodCIDRs: []netip.Prefix{mustPrefix(cidr)}, FormatVersion: meshapi.FormatVersion})
	r.put(t, meshapi.HeartbeatKey(name), meshapi.FormatTime(time.Now()))
	for _, k := range meshapi.SyncedKinds {
		r.put(t, meshapi.SyncedKey(name, k), meshapi.FormatTime(time.Now()))
	}
	return r
}

// TestMeshThroughReadOnlyProxy runs the agent side against the real
// clustermesh-apiserver proxy: sync, proxy stopped (state kept, not ready),
// changes applied on restart with only vanished entries withdrawn, and a
// certificate whose CN is not allow-listed.
func TestMeshThroughReadOnlyProxy(t *testing.T) {
	east := startProxyRemote(t, "east", 2, "10.2.0.0/16")
	east.node(t, "e1", "192.168.1.1", "10.2.1.0/24")
	east.node(t, "e2", "192.168.1.2", "10.2.2.0/24")
	east.node(t, "e3", "192.168.1.3", "10.2.3.0/24")

	dir := newConfigDirWith(t, east.files(t, "remote-local"))
	m := startMesh(t, dir)
	all := want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.2.0/24 via 192.168.1.2", "10.2.3.0/24 via 192.168.1.3")
	m.waitEntries(t, "east", all)
	m.waitReady(t, "east")

	// The agent's client is read-only at the proxy: a write through the
	// same identity is refused.
	cfgClient := east.env.Client(t, "remote-local")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := cfgClient.Put(ctx, meshapi.NodeKey("east", "evil"), "{}")
	cancel()
	require.ErrorContains(t, err, "PermissionDenied")

	addr := strings.TrimPrefix(east.env.Endpoint, "https://")
	east.env.Proxy.Stop()
	eventually(t, 20*time.Second, "east not ready with its proxy stopped", func() bool {
		st := m.remote(t, "east")
		return !st.Ready && strings.Contains(st.Reason, "unreachable")
	})
	require.Equal(t, all, m.rec.Cluster("east"), "state kept while the proxy is down")

	east.del(t, meshapi.NodeKey("east", "e2"))
	east.node(t, "e4", "192.168.1.4", "10.2.4.0/24")
	log := logrus.New()
	log.SetOutput(clustermeshtest.LogWriter{TB: t})
	p, err := proxy.Start(t.Context(), proxy.Config{Listen: addr, TLS: east.env.PKI.ServerTLS(t, "remote-local"), Client: east.env.Etcd.Reader, Log: log})
	require.NoError(t, err)
	t.Cleanup(p.Stop)

	after := want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.3.0/24 via 192.168.1.3", "10.2.4.0/24 via 192.168.1.4")
	m.waitEntries(t, "east", after)
	m.waitReady(t, "east")
	for _, c := range m.rec.Changes() {
		for _, removed := range c.Removed {
			require.Equal(t, mustPrefix("10.2.2.0/24"), removed, "only e2's CIDR vanished")
		}
	}

	// A certificate with a CN the proxy does not allow: refused at the
	// handshake, so east goes unready and keeps its entries.
	dir.Set(t, east.files(t, "remote-intruder"))
	eventually(t, 20*time.Second, "east refused at TLS with a CN off the allow-list", func() bool {
		st := m.remote(t, "east")
		return !st.Ready && mentionsTLS(st.LastError)
	})
	t.Logf("with a CN off the allow-list: %s", m.remote(t, "east").LastError)
	require.Equal(t, after, m.rec.Cluster("east"))
	dir.Set(t, east.files(t, "remote-local"))
	m.waitReady(t, "east")
}
