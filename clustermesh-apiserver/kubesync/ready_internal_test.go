package kubesync

import (
	"io"
	"net/netip"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes/fake"
	mcsfake "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned/fake"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// unusedKV satisfies the etcd client interface; checkConvergence never calls it.
type unusedKV struct{ clientv3.KV }

// Batch writers call checkConvergence concurrently once every kind is
// written. Ready must be closed exactly once: a double close panics and took
// the whole clustermesh-apiserver down under load.
func TestReadyClosesOnceUnderConcurrentConvergenceChecks(t *testing.T) {
	// Info level (to nowhere) keeps the log call between the check and the
	// close, as in the real server; it widens the window the race needs.
	log := logrus.New()
	log.SetOutput(io.Discard)
	s, err := New(Config{
		Cluster: Cluster{Name: "east", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
		Kube:    fake.NewClientset(), MCS: mcsfake.NewSimpleClientset(), Etcd: unusedKV{}, Log: log,
	})
	require.NoError(t, err)
	s.mu.Lock()
	for _, kind := range meshapi.SyncedKinds {
		s.listed[kind] = true
		s.canaried[kind] = true
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 64 {
		wg.Go(func() {
			<-start
			s.checkConvergence()
		})
	}
	close(start)
	wg.Wait()
	select {
	case <-s.Ready():
	default:
		t.Fatal("Ready is not closed although every kind is written")
	}
}
