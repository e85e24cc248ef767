package kubesync

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes/fake"
	mcsfake "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned/fake"

	"github.com/podmesh/podmesh/clustermesh-apiserver/etcdserver"
)

// Helpers for this package's tests and benchmarks, internal and external
// (exported from a _test file, so they exist only in test builds).

func quietLog() *logrus.Logger {
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	return log
}

// StartTestEtcd starts an embedded etcd without fsync until the test ends.
func StartTestEtcd(tb testing.TB) *etcdserver.Server {
	tb.Helper()
	e, err := etcdserver.Start(tb.Context(), etcdserver.Config{DataDir: tb.TempDir(), UnsafeNoFsync: true, Log: quietLog(), EtcdLog: zap.NewNop()})
	require.NoError(tb, err)
	tb.Cleanup(func() { e.Close() })
	return e
}

// unusedKV satisfies the etcd client interface for tests of a Syncer that
// is never run.
type unusedKV struct{ clientv3.KV }

// newIdleSyncer returns a Syncer of cluster east (ID 1, pods in 10.1.0.0/16)
// that is never run, logging at Info to nowhere, for tests of its state
// machine.
func newIdleSyncer(tb testing.TB) *Syncer {
	tb.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	s, err := New(Config{
		Cluster: Cluster{Name: "east", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
		Kube:    fake.NewClientset(), MCS: mcsfake.NewSimpleClientset(), Etcd: unusedKV{}, Log: log,
	})
	require.NoError(tb, err)
	return s
}

// RunTestSync runs a Syncer with cfg until the test ends and waits until it
// is ready. Unset fields default to cluster east (ID 7, pods in 10.0.0.0/8),
// an MCS clientset that serves no ServiceExports, and a quiet log.
func RunTestSync(tb testing.TB, cfg Config) *Syncer {
	tb.Helper()
	if cfg.Cluster.Name == "" {
		cfg.Cluster = Cluster{Name: "east", ID: 7, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	}
	if cfg.MCS == nil {
		cfg.MCS = mcsfake.NewSimpleClientset()
	}
	if cfg.Log == nil {
		cfg.Log = quietLog()
	}
	s, err := New(cfg)
	require.NoError(tb, err)
	ctx, cancel := context.WithCancel(tb.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
	select {
	case <-s.Ready():
	case err := <-done:
		tb.Fatalf("sync stopped before it was ready: %v", err)
	case <-time.After(60 * time.Second):
		tb.Fatal("sync not ready")
	}
	return s
}
