package kubesync_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podmesh/podmesh/clustermesh-apiserver/etcdserver"
	"github.com/podmesh/podmesh/clustermesh-apiserver/kubesync"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// benchSync runs a Syncer with the default CoalesceDelay over a fake
// clientset holding pods p0..p<pods-1>, against an embedded etcd (no fsync,
// so etcd's disk does not dominate), and waits until it is ready.
func benchSync(b *testing.B, pods int) (*fake.Clientset, *etcdserver.Server, *kubesync.Metrics) {
	b.Helper()
	e := kubesync.StartTestEtcd(b)
	objs := make([]runtime.Object, 0, pods)
	for i := range pods {
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("p%d", i)},
			Spec:       corev1.PodSpec{NodeName: "n1"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: podIP(i, 0)}}},
		})
	}
	kube := fake.NewClientset(objs...)
	m := kubesync.NewMetrics()
	kubesync.RunTestSync(b, kubesync.Config{Kube: kube, Etcd: e.Writer, Metrics: m})
	return kube, e, m
}

// podIP is the IP of pod i at version v (distinct for every pod and version
// below 65,536).
func podIP(i, v int) string {
	return netip.AddrFrom4([4]byte{10, byte(i), byte(v >> 8), byte(v)}).String()
}

func setIP(ctx context.Context, kube *fake.Clientset, i int, ip string) error {
	p, err := kube.CoreV1().Pods("default").Get(ctx, fmt.Sprintf("p%d", i), metav1.GetOptions{})
	if err != nil {
		return err
	}
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	_, err = kube.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{})
	return err
}

// etcdView follows the endpoint keys through a watch and remembers each
// key's IP.
type etcdView struct {
	wch  clientv3.WatchChan
	last map[string]string
}

func newEtcdView(ctx context.Context, e *etcdserver.Server) *etcdView {
	return &etcdView{wch: e.Reader.Watch(ctx, meshapi.EndpointsClusterPrefix("east"), clientv3.WithPrefix()), last: map[string]string{}}
}

// wait returns once key holds ip.
func (v *etcdView) wait(b *testing.B, key, ip string) {
	b.Helper()
	for v.last[key] != ip {
		select {
		case resp := <-v.wch:
			require.NoError(b, resp.Err())
			for _, ev := range resp.Events {
				if e, err := meshapi.DecodeEndpoint(ev.Kv.Value); err == nil && ev.Type == clientv3.EventTypePut && len(e.IPs) == 1 {
					v.last[string(ev.Kv.Key)] = e.IPs[0].String()
				}
			}
		case <-time.After(30 * time.Second):
			b.Fatalf("%s never held %s", key, ip)
		}
	}
}

// A lone change — a pod whose key was not written within the coalescing
// window — from the Kubernetes write to the etcd watch event. Pods are
// changed round-robin over 200 pods, so each one's previous write is at
// least 200 round trips old (far more than the 100 ms window).
func BenchmarkLoneChangeReachesEtcd(b *testing.B) {
	const pods = 200
	kube, e, m := benchSync(b, pods)
	ctx := b.Context()
	view := newEtcdView(ctx, e)
	puts := m.EtcdWrites.WithLabelValues("put")
	before := counterValue(b, puts)
	n := 0
	for b.Loop() {
		i, v := n%pods, n/pods+1
		ip := podIP(i, v)
		require.NoError(b, setIP(ctx, kube, i, ip))
		view.wait(b, meshapi.EndpointKey("east", "default", fmt.Sprintf("p%d", i)), ip)
		n++
	}
	b.ReportMetric((counterValue(b, puts)-before)/float64(n), "puts/op")
}

// 1,000 updates of 4 pods as fast as the client makes them, until etcd holds
// the last value of each: the writes per burst show the coalescing.
func BenchmarkBurstOfUpdatesIsCoalesced(b *testing.B) {
	const pods, updates = 4, 1000
	kube, e, m := benchSync(b, pods)
	ctx := b.Context()
	view := newEtcdView(ctx, e)
	puts := m.EtcdWrites.WithLabelValues("put")
	before := counterValue(b, puts)
	round := 0
	for b.Loop() {
		for u := range updates {
			require.NoError(b, setIP(ctx, kube, u%pods, podIP(u%pods, round*updates+u+1)))
		}
		for i := range pods {
			view.wait(b, meshapi.EndpointKey("east", "default", fmt.Sprintf("p%d", i)), podIP(i, round*updates+updates-pods+i+1))
		}
		round++
	}
	b.ReportMetric((counterValue(b, puts)-before)/float64(round), "puts/burst")
}
