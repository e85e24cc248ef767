package importer

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/pkg/meshapi"
	"github.com/podmesh/podmesh/test/kubetest"
)

// corednsBinary finds a CoreDNS binary: $PODMESH_COREDNS, else coredns in
// the test tools directory (kubetest.BinDir).
func corednsBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("PODMESH_COREDNS"); p != "" {
		return p
	}
	dir, err := kubetest.BinDir()
	if err != nil {
		t.Skipf("no CoreDNS binary: %v", err)
	}
	p := filepath.Join(dir, "coredns")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("no CoreDNS binary at %s (build it with the test tools, or set PODMESH_COREDNS): %v", p, err)
	}
	return p
}

// startCoreDNS runs CoreDNS on 127.0.0.1 with the multicluster option
// against the test apiserver and returns a resolver that asks it only.
func startCoreDNS(t testing.TB, bin, kubeconfig string) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := pc.LocalAddr().String()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	dir := t.TempDir()
	// The stanza of daemonset/coredns/Corefile.example, pointed at the test
	// apiserver.
	corefile := fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    errors
    kubernetes cluster.local clusterset.local {
        kubeconfig %s
        multicluster clusterset.local
    }
}
`, port, kubeconfig)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Corefile"), []byte(corefile), 0o644))
	logf, err := os.Create(filepath.Join(dir, "coredns.log"))
	require.NoError(t, err)
	cmd := exec.Command(bin, "-conf", filepath.Join(dir, "Corefile"))
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // the process this test started, by PID
		<-exited
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("coredns log:\n%s", b)
		}
	})
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// TestCoreDNSResolvesImports runs the real CoreDNS against what the importer
// wrote and resolves the clusterset.local names of KEP-1645's DNS spec.
func TestCoreDNSResolvesImports(t *testing.T) {
	bin := corednsBinary(t)
	k := startKube(t)
	ctx := context.Background()
	west, south := westAndSouth(t, k, "shop")
	db := func(eps ...meshapi.ServiceEndpoint) meshapi.Service {
		return meshapi.Service{Namespace: "shop", Name: "db", Type: meshapi.ServiceTypeHeadless, Headless: true, ExportTime: t0,
			Ports: []meshapi.ServicePort{{Name: "pg", Port: 5432, Protocol: "TCP"}}, Endpoints: eps}
	}
	db0, db1 := ep("10.2.0.20", ""), ep("10.2.0.21", "")
	db0.Pod, db1.Pod = "db-0", "db-1" // StatefulSet pods: the pod name is the hostname
	db2 := ep("10.3.0.22", "")
	db2.Pod = "db-2"
	west.export(t, db(db0, db1))
	south.export(t, db(db2))
	west.export(t, webExport("shop", t0, []meshapi.ServicePort{portHTTP}, ep("10.2.0.10", "")))
	south.export(t, webExport("shop", t1, []meshapi.ServicePort{portHTTP}, ep("10.3.0.10", "")))
	runImporter(t, k, newConfigDir(t, west, south), nil)

	var clusterIP string
	require.Eventually(t, func() bool {
		si, err := k.mcs.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil || len(si.Spec.IPs) == 0 {
			return false
		}
		clusterIP = si.Spec.IPs[0]
		return len(addrsOf(k.slicesOf(t, "shop", "db", "south"))) == 1 && len(addrsOf(k.slicesOf(t, "shop", "db", "west"))) == 2
	}, waitFor, 50*time.Millisecond)

	r := startCoreDNS(t, bin, k.Kubeconfig)
	lookup := func(name string) []string {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		addrs, err := r.LookupHost(qctx, name)
		if err != nil {
			return nil
		}
		slices.Sort(addrs)
		return addrs
	}
	// CoreDNS lists and watches on start; wait for it to answer.
	require.Eventually(t, func() bool { return len(lookup("db-0.west.db.shop.svc.clusterset.local")) > 0 }, waitFor, 100*time.Millisecond)

	assert.Equal(t, []string{"10.2.0.20"}, lookup("db-0.west.db.shop.svc.clusterset.local"))
	assert.Equal(t, []string{"10.2.0.21"}, lookup("db-1.west.db.shop.svc.clusterset.local"))
	assert.Equal(t, []string{"10.3.0.22"}, lookup("db-2.south.db.shop.svc.clusterset.local"))
	assert.Empty(t, lookup("db-2.west.db.shop.svc.clusterset.local"), "a hostname lives under its own cluster only")
	assert.Equal(t, []string{"10.2.0.20", "10.2.0.21", "10.3.0.22"}, lookup("db.shop.svc.clusterset.local"), "a headless import lists every ready pod of every cluster")
	assert.Equal(t, []string{clusterIP}, lookup("web.shop.svc.clusterset.local"), "a ClusterSetIP import resolves to the derived Service's IP")
	assert.Empty(t, lookup("web.shop.svc.cluster.local"), "imports add nothing to cluster.local")

	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, srvs, err := r.LookupSRV(qctx, "http", "tcp", "web.shop.svc.clusterset.local")
	require.NoError(t, err)
	require.Len(t, srvs, 1)
	assert.Equal(t, uint16(80), srvs[0].Port)
	assert.Equal(t, "web.shop.svc.clusterset.local.", srvs[0].Target)
	_, srvs, err = r.LookupSRV(qctx, "pg", "tcp", "db.shop.svc.clusterset.local")
	require.NoError(t, err)
	var targets []string
	for _, s := range srvs {
		assert.Equal(t, uint16(5432), s.Port)
		targets = append(targets, s.Target)
	}
	slices.Sort(targets)
	assert.Equal(t, []string{"db-0.west.db.shop.svc.clusterset.local.", "db-1.west.db.shop.svc.clusterset.local.", "db-2.south.db.shop.svc.clusterset.local."}, targets)

	// Churn: south's pod changes IP; its name follows.
	db2.IP = netip.MustParseAddr("10.3.0.23")
	south.export(t, db(db2))
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"10.3.0.23"}, lookup("db-2.south.db.shop.svc.clusterset.local"))
	}, waitFor, 100*time.Millisecond)
}

// BenchmarkRemoteChangeToDNS measures the import half of "a pod becomes
// ready in one cluster → its name resolves in another": from a remote's
// etcd write of a new pod IP (what its clustermesh-apiserver does when the
// EndpointSlice changes) to the real CoreDNS answering
// <hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local with it, over 100
// changes. DNS is polled every 5ms, so values are rounded up to that.
//
//	PODMESH_COREDNS=<coredns> PODMESH_BIN=/work/main/bin go test -run '^$' -bench RemoteChangeToDNS -benchtime 1x ./clustermesh-apiserver/importer
func BenchmarkRemoteChangeToDNS(b *testing.B) {
	bin := corednsBinary(b)
	for range b.N {
		k := startKube(b)
		ctx := context.Background()
		_, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{})
		require.NoError(b, err)
		west := newFakeCluster(b, "west", 2, "10.2.0.0/16", true)
		export := func(ip string) {
			e := ep(ip, "")
			e.Pod = "db-0"
			west.export(b, meshapi.Service{Namespace: "shop", Name: "db", Type: meshapi.ServiceTypeHeadless, Headless: true, ExportTime: t0,
				Ports: []meshapi.ServicePort{{Name: "pg", Port: 5432, Protocol: "TCP"}}, Endpoints: []meshapi.ServiceEndpoint{e}})
		}
		export("10.2.1.0")
		runImporter(b, k, newConfigDir(b, west), nil)
		r := startCoreDNS(b, bin, k.Kubeconfig)
		resolve := func() string {
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			a, err := r.LookupHost(qctx, "db-0.west.db.shop.svc.clusterset.local")
			if err != nil || len(a) != 1 {
				return ""
			}
			return a[0]
		}
		require.Eventually(b, func() bool { return resolve() == "10.2.1.0" }, waitFor, 10*time.Millisecond)
		b.ResetTimer()
		var lat []time.Duration
		for i := 1; i <= 100; i++ {
			ip := fmt.Sprintf("10.2.1.%d", i)
			start := time.Now()
			export(ip)
			for resolve() != ip {
				if time.Since(start) > waitFor {
					b.Fatalf("%s never resolved", ip)
				}
				time.Sleep(5 * time.Millisecond)
			}
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
		b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
	}
}
