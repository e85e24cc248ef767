package importer

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
	"github.com/podmesh/podmesh/pkg/meshapi"
	"github.com/podmesh/podmesh/test/kubetest"
)

// BenchmarkImport10kEndpoints imports 1,000 services, each exported by all
// of 10 clusters with one endpoint per cluster (10,000 endpoints, 10,000
// slices), into a real kube-apiserver, and reports the time to converge, the
// writes it needed, and the Go heap the importer added. The clusters' data
// lives in one real etcd (one prefix per cluster, one config file each).
// Run once:
//
//	PODMESH_BIN=/work/main/bin go test -run '^$' -bench Import10k -benchtime 1x ./clustermesh-apiserver/importer
//
// IMPORT_BENCH_QPS sets the client's QPS limit (default 50, what
// clustermesh-apiserver runs with).
func BenchmarkImport10kEndpoints(b *testing.B) {
	const clusters, services = 10, 1000
	qps := float32(50)
	if v, err := strconv.ParseFloat(os.Getenv("IMPORT_BENCH_QPS"), 32); err == nil {
		qps = float32(v)
	}
	for range b.N {
		s := kubetest.Start(b)
		installMCSCRDs(b, s.Config)
		cfg := rest.CopyConfig(s.Config)
		cfg.QPS, cfg.Burst = qps, int(2*qps)
		kube, err := kubernetes.NewForConfig(cfg)
		require.NoError(b, err)
		mcs, err := mcsclient.NewForConfig(cfg)
		require.NoError(b, err)
		ctx := context.Background()
		_, err = kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{})
		require.NoError(b, err)

		e := kvstoretest.StartEtcd(b, "remotes")
		dir := b.TempDir()
		files := e.WriteClientFiles(b, dir, "client", "remote-east")
		for c := range clusters {
			name := fmt.Sprintf("c%02d", c+1)
			cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(10 + c), 0, 0}), 16)
			cc, _ := meshapi.Encode(meshapi.ClusterConfig{Name: name, ID: uint32(10 + c), PodCIDRs: []netip.Prefix{cidr}, ServiceCIDRs: []netip.Prefix{},
				Capabilities: meshapi.Capabilities{Services: true, ServiceExports: true}, FormatVersion: meshapi.FormatVersion})
			e.Put(b, meshapi.ClusterConfigKey(name), string(cc))
			e.Put(b, meshapi.HeartbeatKey(name), meshapi.FormatTime(time.Now()))
			for i := range services {
				ip := netip.AddrFrom4([4]byte{10, byte(10 + c), byte(i / 250), byte(i%250 + 1)})
				v, _ := meshapi.Encode(meshapi.Service{Cluster: name, ClusterID: uint32(10 + c), Namespace: "bench", Name: fmt.Sprintf("svc-%04d", i),
					Type: meshapi.ServiceTypeClusterSetIP, ExportTime: t0, Ports: []meshapi.ServicePort{portHTTP},
					Endpoints: []meshapi.ServiceEndpoint{{IP: ip, Hostname: fmt.Sprintf("pod-%d", i), Node: "n1", Ready: true, Serving: true}}})
				e.Put(b, meshapi.ServiceKey(name, "bench", fmt.Sprintf("svc-%04d", i)), string(v))
			}
			e.Put(b, meshapi.SyncedKey(name, meshapi.KindServices), meshapi.FormatTime(time.Now()))
			require.NoError(b, os.WriteFile(filepath.Join(dir, name), kvstoretest.ClientYAML(e.Endpoint, e.CAFile, files.CertFile, files.KeyFile), 0o600))
		}

		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		log := logrus.New()
		log.SetLevel(logrus.ErrorLevel)
		imp, err := New(Options{LocalCluster: "east", LocalClusterID: 1, LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
			ConfigDir: dir, Kube: kube, MCS: mcs, Log: log, Workers: 8})
		require.NoError(b, err)
		b.ResetTimer()
		start := time.Now()
		ictx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- imp.Run(ictx) }()

		// The poller has its own client, so it never spends the importer's QPS.
		poll, err := mcsclient.NewForConfig(s.Config)
		require.NoError(b, err)
		converged := func() bool {
			l, err := poll.MulticlusterV1beta1().ServiceImports("bench").List(ctx, metav1.ListOptions{})
			if err != nil || len(l.Items) != services {
				return false
			}
			for _, si := range l.Items {
				if len(si.Spec.IPs) == 0 || len(si.Status.Clusters) != clusters {
					return false
				}
			}
			n, cont := 0, ""
			for {
				sl, err := s.Client.DiscoveryV1().EndpointSlices("bench").List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ControllerName, Limit: 2000, Continue: cont})
				if err != nil {
					return false
				}
				for _, x := range sl.Items {
					n += len(x.Endpoints)
				}
				if cont = sl.Continue; cont == "" {
					break
				}
			}
			return n == clusters*services
		}
		for !converged() {
			select {
			case err := <-done:
				b.Fatalf("importer stopped: %v", err)
			case <-time.After(time.Second):
			}
			if time.Since(start) > 30*time.Minute {
				b.Fatal("no convergence after 30 minutes")
			}
		}
		elapsed := time.Since(start)
		b.StopTimer()
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		writes := imp.m.Writes()
		b.ReportMetric(elapsed.Seconds(), "s-to-converge")
		b.ReportMetric(writes, "kube-writes")
		b.ReportMetric(writes/elapsed.Seconds(), "kube-writes/s")
		b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/(1<<20), "heap-MiB-added")
		cancel()
		<-done
	}
}
