package benchapiserver

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	"github.com/podmesh/podmesh/pkg/meshapi"
	"github.com/podmesh/podmesh/test/kubetest"
)

const watchers = 1000

func freeAddr(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// rssKiB reads VmRSS of a process.
func rssKiB(b *testing.B, pid int) float64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				b.Fatal(err)
			}
			return v
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// metric returns the value of an unlabelled metric from a Prometheus text
// page, or -1 when absent.
func metric(page, name string) float64 {
	for _, line := range strings.Split(page, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

func scrape(b *testing.B, url string) string {
	b.Helper()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		b.Fatal(err)
	}
	return buf.String()
}

// BenchmarkProxy1000Watchers measures the clustermesh-apiserver process
// with 1,000 remote watchers of the same prefix. "list-then-watch" is what
// an agent does (list, then watch from the listing's revision + 1);
// "watch-from-now" opens watches without a revision.
func BenchmarkProxy1000Watchers(b *testing.B) {
	for _, fromList := range []bool{true, false} {
		name := "list-then-watch"
		if !fromList {
			name = "watch-from-now"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				benchWatchers(b, fromList)
			}
		})
	}
}

func benchWatchers(b *testing.B, fromList bool) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "clustermesh-apiserver")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/podmesh/podmesh/clustermesh-apiserver").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	kube := kubetest.Start(b)
	cfg := serverConfig(b, dir)
	pki := proxytest.NewPKI(b)
	// serverConfig wrote its own PKI; overwrite with one we keep.
	if err := pki.Server.WriteFiles(cfg.TLSCert, cfg.TLSKey, true); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(cfg.TLSClientCA, pki.CA.CertPEM, 0o644); err != nil {
		b.Fatal(err)
	}
	listen, health := freeAddr(b), freeAddr(b)
	cmd := exec.Command(bin,
		"--cluster-name=east", "--cluster-id=7", "--pod-cidrs=10.1.0.0/16",
		"--kubeconfig="+kube.Kubeconfig, "--listen="+listen, "--health-listen="+health,
		"--tls-cert="+cfg.TLSCert, "--tls-key="+cfg.TLSKey, "--tls-client-ca="+cfg.TLSClientCA,
		"--allowed-peers=remote-west", "--data-dir="+cfg.DataDir, "--log-level=warn")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get("http://" + health + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("not ready:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond) // polling interval of a readiness probe
	}
	metricsURL := "http://" + health + "/metrics"
	page := scrape(b, metricsURL)
	rss0 := rssKiB(b, cmd.Process.Pid)
	etcdWatchers0 := metric(page, "etcd_debugging_mvcc_watcher_total")

	// 1,000 agents: one client, one mTLS connection and one watch each.
	tlsCfg := pki.ClientTLS(b, pki.IssueClient(b, "remote-west"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clients := make([]*clientv3.Client, watchers)
	chans := make([]clientv3.WatchChan, watchers)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, watchers)
	sem := make(chan struct{}, 32)
	for i := range watchers {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + listen}, TLS: tlsCfg.Clone(), DialTimeout: 30 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				errs <- err
				return
			}
			opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCreatedNotify()}
			if fromList {
				list, err := c.Get(ctx, meshapi.Root, clientv3.WithPrefix())
				if err != nil {
					errs <- fmt.Errorf("list %d: %w", i, err)
					return
				}
				opts = append(opts, clientv3.WithRev(list.Header.Revision+1))
			}
			wch := c.Watch(clientv3.WithRequireLeader(ctx), meshapi.Root, opts...)
			select {
			case resp := <-wch:
				if !resp.Created {
					errs <- fmt.Errorf("watch %d: not created: %v", i, resp.Err())
					return
				}
			case <-time.After(time.Minute):
				errs <- fmt.Errorf("watch %d: no created notification", i)
				return
			}
			mu.Lock()
			clients[i], chans[i] = c, wch
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()

	// Every watcher receives the next heartbeat: the watches are live.
	var got sync.WaitGroup
	for _, wch := range chans {
		got.Go(func() {
			for resp := range wch {
				for _, ev := range resp.Events {
					if string(ev.Kv.Key) == meshapi.HeartbeatKey("east") {
						return
					}
				}
			}
		})
	}
	got.Wait()

	page = scrape(b, metricsURL)
	rss1 := rssKiB(b, cmd.Process.Pid)
	b.ReportMetric(rss0/1024, "rss-idle-MiB")
	b.ReportMetric(rss1/1024, "rss-1000-watchers-MiB")
	b.ReportMetric((rss1-rss0)/watchers, "rss-KiB/watcher")
	b.ReportMetric(metric(page, "etcd_debugging_mvcc_watcher_total")-etcdWatchers0, "etcd-watches-added")
	b.ReportMetric(metric(page, "etcd_debugging_mvcc_watcher_total"), "etcd-watches-total")
	b.ReportMetric(metric(page, "etcd_grpc_proxy_watchers_coalescing_total"), "proxy-watchers-coalescing")
}
