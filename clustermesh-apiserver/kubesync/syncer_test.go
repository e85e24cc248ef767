package kubesync_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podmesh/podmesh/clustermesh-apiserver/kubesync"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// flakyKV fails the first `failures` write transactions, then passes them
// through.
type flakyKV struct {
	kubesync.KV
	failures atomic.Int64
}

var errInjected = errors.New("injected etcd failure")

func (f *flakyKV) Txn(ctx context.Context) clientv3.Txn {
	return &flakyTxn{Txn: f.KV.Txn(ctx), kv: f}
}

type flakyTxn struct {
	clientv3.Txn
	kv *flakyKV
}

func (t *flakyTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.Txn = t.Txn.If(cs...); return t }
func (t *flakyTxn) Then(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(ops...); return t }
func (t *flakyTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }

func (t *flakyTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.kv.failures.Add(-1) >= 0 {
		return nil, errInjected
	}
	return t.Txn.Commit()
}

func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

// Unit-level test with a fake clientset: the Kubernetes side is not what is
// under test here, etcd failures are.
func TestFailedWritesAreRetriedUntilTheyLand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded etcd")
	}
	ctx := t.Context()
	e := kubesync.StartTestEtcd(t)
	kube := fake.NewClientset(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-0"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.1.1.5"}}},
	})
	kv := &flakyKV{KV: e.Writer}
	kv.failures.Store(5)
	m := kubesync.NewMetrics()
	kubesync.RunTestSync(t, kubesync.Config{Kube: kube, Etcd: kv, Metrics: m})
	require.GreaterOrEqual(t, counterValue(t, m.EtcdWriteErrors.WithLabelValues("put")), 5.0, "every injected failure was seen")
	resp, err := e.Reader.Get(ctx, meshapi.EndpointKey("east", "default", "web-0"))
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "the endpoint landed after the retries")
	require.Equal(t, `{"cluster":"east","clusterID":7,"namespace":"default","name":"web-0","node":"n1","ips":["10.1.1.5"],"hostname":"","subdomain":""}`, string(resp.Kvs[0].Value))
	for _, kind := range meshapi.SyncedKinds {
		resp, err := e.Reader.Get(ctx, meshapi.SyncedKey("east", kind))
		require.NoError(t, err)
		require.Len(t, resp.Kvs, 1, "canary %s", kind)
	}
}

// Keys the previous run left behind are deleted only after the listing of
// their kind, before that kind's canary; keys of no kind (here a former
// cluster name's heartbeat and config) go once every canary is written.
func TestLeftoversAreDeletedAfterTheListingAndNotBefore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded etcd")
	}
	ctx := t.Context()
	e := kubesync.StartTestEtcd(t)
	live := meshapi.EndpointKey("east", "default", "web-0")
	gone := meshapi.EndpointKey("east", "default", "gone")
	oldNode := meshapi.NodeKey("old", "n1")
	oldHeartbeat := meshapi.HeartbeatKey("old")
	oldConfig := meshapi.ClusterConfigKey("old")
	for _, k := range []string{live, gone, oldNode, oldHeartbeat, oldConfig} {
		_, err := e.Writer.Put(ctx, k, "left over")
		require.NoError(t, err)
	}
	start, err := e.Writer.Get(ctx, "podmesh/")
	require.NoError(t, err)
	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	wch := e.Reader.Watch(wctx, meshapi.Root, clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))

	kube := fake.NewClientset(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-0"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.1.1.5"}}},
	})
	kubesync.RunTestSync(t, kubesync.Config{Kube: kube, Etcd: e.Writer})

	// Follow etcd until the former cluster's keys are gone.
	revs := map[string]int64{} // "PUT key" / "DELETE key" -> revision
	deadline := time.After(60 * time.Second)
	for revs["DELETE "+oldHeartbeat] == 0 || revs["DELETE "+oldConfig] == 0 {
		select {
		case resp := <-wch:
			require.NoError(t, resp.Err())
			for _, ev := range resp.Events {
				revs[ev.Type.String()+" "+string(ev.Kv.Key)] = ev.Kv.ModRevision
			}
		case <-deadline:
			t.Fatalf("leftovers not deleted; events %v", revs)
		}
	}
	epCanary := revs["PUT "+meshapi.SyncedKey("east", meshapi.KindEndpoints)]
	nodeCanary := revs["PUT "+meshapi.SyncedKey("east", meshapi.KindNodes)]
	require.NotZero(t, epCanary)
	require.NotZero(t, nodeCanary)
	require.NotZero(t, revs["PUT "+live], "the live pod's value is rewritten")
	require.Zero(t, revs["DELETE "+live], "the live pod is never deleted")
	require.NotZero(t, revs["DELETE "+gone])
	require.Less(t, revs["DELETE "+gone], epCanary, "stale endpoint deleted before the endpoints canary")
	require.NotZero(t, revs["DELETE "+oldNode])
	require.Less(t, revs["DELETE "+oldNode], nodeCanary, "stale node deleted before the nodes canary")
	lastCanary := max(epCanary, nodeCanary, revs["PUT "+meshapi.SyncedKey("east", meshapi.KindServices)])
	require.Greater(t, revs["DELETE "+oldHeartbeat], lastCanary, "keys of no kind go after every canary")
	require.Greater(t, revs["DELETE "+oldConfig], lastCanary)
}
