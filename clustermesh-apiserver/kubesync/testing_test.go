package kubesync

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
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
