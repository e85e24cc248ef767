package lab_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/importer"
	"github.com/podmesh/podmesh/pkg/meshapi"
	"github.com/podmesh/podmesh/test/lab"
)

// rogue is a remote cluster that lies: a plain etcd (the lab's etcd
// binary) in a node's network namespace of c3, with its own CA, which c1 is
// configured to read exactly like a real peer (a Secret entry written by
// certs.MeshSecretFiles). What it publishes is written by the test.
type rogue struct {
	cli *clientv3.Client
	// files are c1's Secret entries for the rogue cluster.
	files map[string][]byte
}

const (
	rogueName = "rogue"
	rogueID   = 9
	roguePort = 23790
)

var rogueCIDR = netip.MustParsePrefix("10.9.0.0/16")

// startRogue runs the rogue's etcd in host's namespace until the test ends
// (stopped by its PID; `podmesh-lab down` would also find it, since it runs
// inside the lab's namespace).
func startRogue(t *testing.T, l *lab.Lab, host *lab.Node, peer string) *rogue {
	t.Helper()
	dir := t.TempDir()
	ca, err := certs.NewCA(certs.Options{CommonName: "rogue-ca"})
	require.NoError(t, err)
	srv, err := ca.IssueServer(certs.Options{CommonName: "rogue-etcd", IPAddresses: []net.IP{host.IP.AsSlice()}})
	require.NoError(t, err)
	require.NoError(t, srv.WriteFiles(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), false))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644))

	url := "https://" + net.JoinHostPort(host.IP.String(), strconv.Itoa(roguePort))
	peerURL := "http://127.0.0.1:" + strconv.Itoa(roguePort+10)
	cmd := exec.Command("nsenter", "--net="+lab.NetNSPath(host.NetNS), l.Bin("etcd"),
		"--name="+rogueName, "--data-dir="+filepath.Join(dir, "data"), "--log-level=error", "--unsafe-no-fsync",
		"--listen-client-urls="+url, "--advertise-client-urls="+url,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL, "--initial-cluster="+rogueName+"="+peerURL,
		"--cert-file="+filepath.Join(dir, "server.crt"), "--key-file="+filepath.Join(dir, "server.key"),
		"--trusted-ca-file="+filepath.Join(dir, "ca.crt"), "--client-cert-auth")
	logFile, err := os.Create(filepath.Join(dir, "etcd.log"))
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logFile.Close()
	})

	admin, err := ca.IssueClient(certs.Options{CommonName: "admin"})
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(admin.CertPEM, admin.KeyPEM)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca.CertPEM))
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		return lab.DialIn(ctx, host.NetNS, "tcp", addr)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		TLS:         &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
	})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "probe")
		require.NoError(ct, err, "rogue etcd not answering; its log: %s", lab.TailLog(logFile.Name(), 20))
	}, time.Minute, 200*time.Millisecond)

	kp, err := ca.IssueClient(certs.Options{CommonName: "remote-" + peer})
	require.NoError(t, err)
	files, err := certs.MeshSecretFiles(rogueName, []string{url}, ca.CertPEM, kp.CertPEM, kp.KeyPEM)
	require.NoError(t, err)
	return &rogue{cli: cli, files: files}
}

func (r *rogue) put(t *testing.T, key string, v any) {
	t.Helper()
	var val string
	switch v := v.(type) {
	case string:
		val = v
	default:
		b, err := meshapi.Encode(v)
		require.NoError(t, err)
		val = string(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := r.cli.Put(ctx, key, val)
	require.NoError(t, err)
}

// publishMeta writes what an honest apiserver writes first: a cluster
// config the mesh admits (its own name, a free ID, its own CIDR), a
// heartbeat and the sync canaries.
func (r *rogue) publishMeta(t *testing.T) {
	r.put(t, meshapi.ClusterConfigKey(rogueName), meshapi.ClusterConfig{Name: rogueName, ID: rogueID, PodCIDRs: []netip.Prefix{rogueCIDR},
		ServiceCIDRs: []netip.Prefix{}, FormatVersion: meshapi.FormatVersion,
		Capabilities: meshapi.Capabilities{Endpoints: true, Services: true, ServiceExports: true}})
	r.put(t, meshapi.HeartbeatKey(rogueName), meshapi.FormatTime(time.Now()))
	for _, k := range meshapi.SyncedKinds {
		r.put(t, meshapi.SyncedKey(rogueName, k), meshapi.FormatTime(time.Now()))
	}
}

// setMeshSecretFiles adds (or with remove, deletes) files in c's
// podmesh-clustermesh Secret, as `podmesh-certs connect` and an operator
// removing a peer would.
func (m *mcsLab) setMeshSecretFiles(t *testing.T, c *lab.Cluster, files map[string][]byte, remove bool) {
	t.Helper()
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		s, err := c.Kube.Client.CoreV1().Secrets(lab.PodmeshNamespace).Get(m.ctx, lab.MeshSecret, metav1.GetOptions{})
		require.NoError(ct, err)
		for k, v := range files {
			if remove {
				delete(s.Data, k)
			} else {
				s.Data[k] = v
			}
		}
		_, err = c.Kube.Client.CoreV1().Secrets(lab.PodmeshNamespace).Update(m.ctx, s, metav1.UpdateOptions{})
		require.NoError(ct, err) // a conflict retries
	}, time.Minute, 200*time.Millisecond)
}

// importedAddrs lists every address of the imported slices in c's svcNS
// that carry selector, by source cluster.
func (m *mcsLab) importedAddrs(t require.TestingT, c *lab.Cluster, selector string) map[string][]netip.Addr {
	l, err := c.Kube.Client.DiscoveryV1().EndpointSlices(svcNS).List(m.ctx, metav1.ListOptions{LabelSelector: selector})
	require.NoError(t, err)
	out := map[string][]netip.Addr{}
	for _, s := range l.Items {
		src := s.Labels[importer.LabelSourceCluster]
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				out[src] = append(out[src], netip.MustParseAddr(a))
			}
		}
	}
	return out
}

// apiServerSecretFile is the path, from the host, of file in the mesh
// Secret volume of c's clustermesh-apiserver: through /proc/<pid>/root of
// its process, since the kubelet mounts the volume inside the node's
// private mount namespace, where the host cannot see it.
func (m *mcsLab) apiServerSecretFile(t *testing.T, c *lab.Cluster, file string) string {
	t.Helper()
	var path string
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
		require.NoError(ct, err)
		var found []string
		for _, f := range procs {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			args := strings.Split(string(b), "\x00")
			if filepath.Base(args[0]) == "clustermesh-apiserver" && slices.Contains(args, "--cluster-name="+c.Name) {
				found = append(found, filepath.Join(filepath.Dir(f), "root", "var/lib/podmesh/clustermesh", file))
			}
		}
		require.Len(ct, found, 1, "cluster %s: clustermesh-apiserver processes", c.Name)
		path = found[0]
		_, err = os.Stat(path)
		require.NoError(ct, err, "the Secret file as the clustermesh-apiserver sees it")
	}, time.Minute, 200*time.Millisecond)
	return path
}

// apiServerLogTail is the end of the log of c's clustermesh-apiserver, as
// the kubelet wrote it into the node's pod log directory.
func (m *mcsLab) apiServerLogTail(t *testing.T, c *lab.Cluster) string {
	p := m.apiServerPod(t, c)
	logs, _ := filepath.Glob(filepath.Join(m.l.StateDir, "nodes", p.Spec.NodeName, "pod-logs", "*"+string(p.UID)+"*", "*", "*.log"))
	if len(logs) == 0 {
		return "(no log file found)"
	}
	return lab.TailLog(logs[len(logs)-1], 40)
}

func (m *mcsLab) apiServerPod(t *testing.T, c *lab.Cluster) corev1.Pod {
	t.Helper()
	pods, err := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(m.ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=clustermesh-apiserver"})
	require.NoError(t, err)
	var running []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			running = append(running, p)
		}
	}
	require.Len(t, running, 1, "cluster %s: running clustermesh-apiserver pods", c.Name)
	return running[0]
}

// testUntrustedRemoteAndConfigRemoval: c1 is configured with a rogue remote
// that publishes a valid export next to lies — an export with an endpoint
// inside c2's pod CIDR, an export of c2's db in c2's name, and keys under
// c2's prefix. Only the valid export is imported; c2's slices stay exactly
// c2's pods. Then the rogue's file is removed from c1's Secret: its slices go,
// measured from the moment the kubelet removed the file from the
// clustermesh-apiserver's volume.
func (m *mcsLab) testUntrustedRemoteAndConfigRemoval(t *testing.T) {
	c1, c2 := m.l.Cluster(1), m.l.Cluster(2)
	host := m.l.Cluster(3).NodeList()[0]
	r := startRogue(t, m.l, host, c1.Name)
	r.publishMeta(t)

	// An address inside a c2 node's pod CIDR that no pod holds (host-local
	// allocates from the bottom).
	cidr := c2.NodeList()[0].PodCIDR
	require.True(t, cidr.Addr().Is4() && cidr.Bits() <= 24, "pod CIDR %s", cidr)
	b := cidr.Addr().As4()
	b[3] = 250
	inC2 := netip.AddrFrom4(b)
	honest := netip.MustParseAddr("10.9.0.5")
	sep := func(ip netip.Addr) meshapi.ServiceEndpoint {
		return meshapi.ServiceEndpoint{IP: ip, Node: "r1", Ready: true, Serving: true}
	}
	port := []meshapi.ServicePort{{Name: "tcp", Port: 80, Protocol: "TCP"}}
	export := func(name string, eps ...netip.Addr) meshapi.Service {
		s := meshapi.Service{Cluster: rogueName, ClusterID: rogueID, Namespace: svcNS, Name: name,
			Type: meshapi.ServiceTypeClusterSetIP, ExportTime: time.Now().UTC().Truncate(time.Second), Ports: port, SessionAffinity: "None", IPFamilies: []string{"IPv4"}}
		for _, ip := range eps {
			s.Endpoints = append(s.Endpoints, sep(ip))
		}
		return s
	}
	// rogue-ok is honest; rogue-web has one endpoint of its own and one
	// inside c2's pod CIDR, which makes the whole export a lie.
	r.put(t, meshapi.ServiceKey(rogueName, svcNS, "rogue-ok"), export("rogue-ok", honest))
	r.put(t, meshapi.ServiceKey(rogueName, svcNS, "rogue-web"), export("rogue-web", honest.Next(), inC2))
	// db in c2's name, under the rogue's prefix.
	r.put(t, meshapi.ServiceKey(rogueName, svcNS, "db"), meshapi.Service{Cluster: c2.Name, ClusterID: 2, Namespace: svcNS, Name: "db",
		Type: meshapi.ServiceTypeHeadless, Headless: true, ExportTime: time.Unix(0, 0).UTC(), Ports: port, SessionAffinity: "None", IPFamilies: []string{"IPv4"},
		Endpoints: []meshapi.ServiceEndpoint{sep(inC2)}})
	// db under c2's own prefix, in the rogue's store.
	r.put(t, meshapi.ServiceKey(c2.Name, svcNS, "db"), meshapi.Service{Cluster: c2.Name, ClusterID: 2, Namespace: svcNS, Name: "db",
		Type: meshapi.ServiceTypeHeadless, Headless: true, ExportTime: time.Unix(0, 0).UTC(), Ports: port, SessionAffinity: "None", IPFamilies: []string{"IPv4"},
		Endpoints: []meshapi.ServiceEndpoint{sep(inC2)}})

	m.setMeshSecretFiles(t, c1, r.files, false)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("c1's clustermesh-apiserver log:\n%s", m.apiServerLogTail(t, c1))
		}
	})
	okSel := importer.LabelMCSServiceName + "=rogue-ok"
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		require.Equal(ct, map[string][]netip.Addr{rogueName: {honest}}, m.importedAddrs(ct, c1, okSel))
	}, 3*time.Minute, 200*time.Millisecond, "c1 imports the rogue's honest export")
	// By now the importer has read all four keys in the rogue's first
	// listing.
	assert.Empty(t, m.importedAddrs(t, c1, importer.LabelMCSServiceName+"=rogue-web"), "slices of the rogue's export with an endpoint in c2's pod CIDR")
	_, err := m.serviceImport(c1, "rogue-web", "{.metadata.name}")
	assert.Error(t, err, "ServiceImport of the refused rogue-web")
	dbSel := importer.LabelMCSServiceName + "=db"
	dbAddrs := m.importedAddrs(t, c1, dbSel)
	assert.NotContains(t, dbAddrs, rogueName, "a slice of db from the rogue")
	for src, addrs := range dbAddrs {
		assert.NotContains(t, addrs, inC2, "db slices from %s hold the rogue's address", src)
	}
	want := []netip.Addr{}
	for _, p := range m.readyPods(t, c2, svcNS, "app=db") {
		want = append(want, p.IP)
	}
	assert.ElementsMatch(t, want, dbAddrs[c2.Name], "c1's slices of c2's db are exactly c2's ready pods")
	all, err := c1.Kube.Client.DiscoveryV1().EndpointSlices(svcNS).List(m.ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, s := range all.Items {
		for _, ep := range s.Endpoints {
			assert.NotContains(t, ep.Addresses, inC2.String(), "slice %s", s.Name)
		}
	}
	t.Logf("rogue remote in c1: rogue-ok imported as %v; rogue-web (with %s, inside c2's pod CIDR) and db in c2's name refused; db from c2 stays %v", honest, inC2, dbAddrs[c2.Name])

	// Removal: from the file's disappearance in the pod's volume to the
	// slices' deletion.
	cfgFile := m.apiServerSecretFile(t, c1, rogueName)
	m.setMeshSecretFiles(t, c1, r.files, true)
	updated := time.Now()
	var gone time.Time
	require.Eventually(t, func() bool {
		_, err := os.Stat(cfgFile)
		if errors.Is(err, os.ErrNotExist) {
			gone = time.Now()
			return true
		}
		return false
	}, 3*time.Minute, 5*time.Millisecond, "the kubelet never removed %s", cfgFile)
	var withdrawn time.Time
	require.Eventually(t, func() bool {
		if len(m.importedAddrs(t, c1, okSel)) == 0 {
			withdrawn = time.Now()
			return true
		}
		return false
	}, time.Minute, 5*time.Millisecond, "the removed rogue's slices stay in c1")
	t.Logf("MEASURED rogue's file removed from c1's clustermesh-apiserver volume → its slices deleted in %s (polled every 5 ms; the kubelet refreshed the volume %s after the Secret update)",
		withdrawn.Sub(gone).Round(time.Millisecond), gone.Sub(updated).Round(time.Millisecond))
}
