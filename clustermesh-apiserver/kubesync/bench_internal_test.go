package kubesync

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// The sync's own share of a lone change's latency: from the moment an
// informer handler records a new value to the etcd watch event, without the
// Kubernetes side. Keys are changed round-robin over 200 endpoints, so each
// is idle (not written within CoalesceDelay) when it changes: with the
// default 100 ms delay this measures what coalescing adds to an idle key.
func BenchmarkSyncPathOfALoneChange(b *testing.B) {
	ctx := b.Context()
	e := StartTestEtcd(b)
	s := RunTestSync(b, Config{Kube: fake.NewClientset(), Etcd: e.Writer})
	wch := e.Reader.Watch(ctx, meshapi.EndpointsClusterPrefix("east"), clientv3.WithPrefix())

	const keys = 200
	n := 0
	for b.Loop() {
		i, v := n%keys, n/keys+1
		name := fmt.Sprintf("p%d", i)
		key := meshapi.EndpointKey("east", "default", name)
		s.exported(meshapi.KindEndpoints, key, &meshapi.Endpoint{Cluster: "east", ClusterID: 7, Namespace: "default", Name: name, Node: "n1",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i), byte(v >> 8), byte(v)})}}, "")
		for seen := false; !seen; {
			select {
			case resp := <-wch:
				require.NoError(b, resp.Err())
				for _, ev := range resp.Events {
					seen = seen || string(ev.Kv.Key) == key
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("%s not written", key)
			}
		}
		n++
	}
}
