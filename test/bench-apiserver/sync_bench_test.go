package benchapiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	"github.com/podmesh/podmesh/clustermesh-apiserver/server"
	"github.com/podmesh/podmesh/pkg/meshapi"
	"github.com/podmesh/podmesh/test/kubetest"
)

const (
	syncPods    = 10000
	creators    = 32
	readyWithin = 10 * time.Minute
)

type running struct {
	srv    *server.Server
	cancel context.CancelFunc
	done   chan error
}

func startServer(b *testing.B, cfg server.Config, kube *kubetest.Server) *running {
	b.Helper()
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	log.SetOutput(io.Discard)
	s, err := server.New(cfg, kube.Config, log)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx, prometheus.NewRegistry()) }()
	select {
	case <-s.Started():
	case err := <-r.done:
		b.Fatalf("server stopped: %v", err)
	}
	return r
}

func (r *running) waitReady(b *testing.B) {
	b.Helper()
	select {
	case <-r.srv.Ready():
	case err := <-r.done:
		b.Fatalf("server stopped: %v", err)
	case <-time.After(readyWithin):
		b.Fatal("not ready")
	}
}

func (r *running) stop(b *testing.B) {
	b.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		b.Fatalf("stop: %v", err)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

func serverConfig(b *testing.B, dir string) server.Config {
	b.Helper()
	pki := proxytest.NewPKI(b)
	cfg := server.Config{
		ClusterName: "east", ClusterID: 7, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
		Listen: "127.0.0.1:0", HealthListen: "127.0.0.1:0", EtcdListenClient: "127.0.0.1:0",
		TLSCert: filepath.Join(dir, "tls.crt"), TLSKey: filepath.Join(dir, "tls.key"), TLSClientCA: filepath.Join(dir, "ca.crt"),
		AllowedPeers: []string{"remote-west"}, DataDir: filepath.Join(dir, "data"), SyncWorkers: 4,
	}
	if err := pki.Server.WriteFiles(cfg.TLSCert, cfg.TLSKey, true); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(cfg.TLSClientCA, pki.CA.CertPEM, 0o644); err != nil {
		b.Fatal(err)
	}
	return cfg
}

// createPods creates n pods with an IP each, with `creators` clients in
// parallel, as a kubelet would (create, then status).
func createPods(ctx context.Context, k kubernetes.Interface, prefix string, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, creators)
	next := make(chan int)
	go func() {
		defer close(next)
		for i := range n {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range creators {
		wg.Go(func() {
			for i := range next {
				name := fmt.Sprintf("%s%05d", prefix, i)
				p := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
					Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/pause"}}},
				}
				if _, err := k.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
				ip := fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)
				patch, _ := json.Marshal(map[string]any{"status": map[string]any{"phase": "Running", "podIP": ip, "podIPs": []map[string]string{{"ip": ip}}}})
				if _, err := k.CoreV1().Pods("default").Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// BenchmarkSync10kPods measures the Kubernetes → etcd sync of 10,000 pods.
func BenchmarkSync10kPods(b *testing.B) {
	for b.Loop() {
		benchSync(b)
	}
}

func benchSync(b *testing.B) {
	kube := kubetest.Start(b)
	dir := b.TempDir()
	cfg := serverConfig(b, dir)
	ctx := context.Background()
	r := startServer(b, cfg, kube)
	r.waitReady(b)

	// Live: count endpoint keys as they appear in etcd.
	w := r.srv.Etcd().Writer
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	all := make(chan time.Time, 1)
	wch := w.Watch(wctx, meshapi.EndpointsClusterPrefix("east"), clientv3.WithPrefix())
	go func() {
		seen := map[string]bool{}
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type == mvccpb.PUT {
					seen[string(ev.Kv.Key)] = true
				}
			}
			if len(seen) == syncPods {
				all <- time.Now()
				return
			}
		}
	}()
	puts := r.srv.SyncMetrics().EtcdWrites.WithLabelValues("put")
	putsBefore := counterValue(puts)
	start := time.Now()
	if err := createPods(ctx, kube.Client, "p", syncPods); err != nil {
		b.Fatalf("create pods: %v", err)
	}
	created := time.Now()
	var synced time.Time
	select {
	case synced = <-all:
	case <-time.After(readyWithin):
		b.Fatal("not every endpoint reached etcd")
	}
	b.ReportMetric(float64(syncPods)/created.Sub(start).Seconds(), "live-pods-created/s")
	b.ReportMetric(float64(syncPods)/synced.Sub(start).Seconds(), "live-pods-in-etcd/s")
	b.ReportMetric(synced.Sub(created).Seconds()*1000, "live-lag-after-last-create-ms")
	b.ReportMetric(counterValue(puts)-putsBefore, "live-etcd-puts")
	wcancel()
	r.stop(b)

	// Cold start: 10,000 pods in Kubernetes, empty data directory, with
	// several numbers of etcd writers.
	var cold server.Config
	for _, workers := range []int{4, 16, 64} {
		cold = cfg
		cold.SyncWorkers = workers
		cold.DataDir = filepath.Join(dir, fmt.Sprintf("data-cold-%d", workers))
		t0 := time.Now()
		r = startServer(b, cold, kube)
		r.waitReady(b)
		d := time.Since(t0)
		b.ReportMetric(float64(syncPods)/d.Seconds(), fmt.Sprintf("cold-start-pods/s-%dworkers", workers))
		r.stop(b)
	}

	// Warm restart: same data directory, nothing changed; no writes needed.
	t0 := time.Now()
	r = startServer(b, cold, kube)
	r.waitReady(b)
	b.ReportMetric(time.Since(t0).Seconds()*1000, "warm-restart-ready-ms")
	b.ReportMetric(counterValue(r.srv.SyncMetrics().EtcdWrites.WithLabelValues("put")), "warm-restart-etcd-puts")
	r.stop(b)
}
