package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/podmesh/podmesh/clustermesh-apiserver/kubesync"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

func TestKubernetesObjectsAppearThroughTheProxyAsWireFormatV1(t *testing.T) {
	h := newHarness(t)
	h.start(t)
	c := h.client(t)
	ctx := t.Context()
	k := h.k

	// The cluster's own entries.
	waitValue(t, c, meshapi.ClusterConfigKey(cluster),
		`{"name":"east","id":7,"podCIDRs":["10.1.0.0/16","fd00:1::/48"],"serviceCIDRs":[],"capabilities":{"endpoints":true,"services":true,"serviceExports":true},"formatVersion":1}`)
	for _, kind := range meshapi.SyncedKinds {
		v, err := value(ctx, c, meshapi.SyncedKey(cluster, kind))
		require.NoError(t, err)
		_, err = meshapi.ParseTime([]byte(v))
		require.NoError(t, err, "canary %s holds a time", kind)
	}
	hb, err := value(ctx, c, meshapi.HeartbeatKey(cluster))
	require.NoError(t, err)
	_, err = meshapi.ParseTime([]byte(hb))
	require.NoError(t, err)
	code, _ := httpGet(t, "http://"+h.srv.HealthAddr()+"/readyz")
	require.Equal(t, http.StatusOK, code)
	code, _ = httpGet(t, "http://"+h.srv.HealthAddr()+"/healthz")
	require.Equal(t, http.StatusOK, code)

	// Nodes: created, updated, filtered, deleted.
	createNode(t, k, "n1", "192.168.1.10", "10.1.1.0/24", "fd00:1:0:1::/64")
	waitValue(t, c, meshapi.NodeKey(cluster, "n1"),
		`{"cluster":"east","clusterID":7,"name":"n1","internalIPs":["192.168.1.10"],"podCIDRs":["10.1.1.0/24","fd00:1:0:1::/64"]}`)
	n1, err := k.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	require.NoError(t, err)
	n1.Status.Addresses = append(n1.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00:99::10"})
	_, err = k.CoreV1().Nodes().UpdateStatus(ctx, n1, metav1.UpdateOptions{})
	require.NoError(t, err)
	waitValue(t, c, meshapi.NodeKey(cluster, "n1"),
		`{"cluster":"east","clusterID":7,"name":"n1","internalIPs":["192.168.1.10","fd00:99::10"],"podCIDRs":["10.1.1.0/24","fd00:1:0:1::/64"]}`)

	createNode(t, k, "outside", "192.168.1.11", "10.9.0.0/24")
	createNode(t, k, "n2", "192.168.1.12", "10.1.2.0/24")
	waitValue(t, c, meshapi.NodeKey(cluster, "n2"),
		`{"cluster":"east","clusterID":7,"name":"n2","internalIPs":["192.168.1.12"],"podCIDRs":["10.1.2.0/24"]}`)
	// n2 was created after "outside" and is there, so "outside" was seen.
	v, err := value(ctx, c, meshapi.NodeKey(cluster, "outside"))
	require.NoError(t, err)
	require.Empty(t, v, "a node whose pod CIDR is outside --pod-cidrs is not exported")
	require.Equal(t, 1.0, gauge(t, h.srv.SyncMetrics().NotExported.WithLabelValues(meshapi.KindNodes, kubesync.ReasonCIDROutside)))

	require.NoError(t, k.CoreV1().Nodes().Delete(ctx, "n2", metav1.DeleteOptions{}))
	waitValue(t, c, meshapi.NodeKey(cluster, "n2"), "")

	// Pods: created, IP changed, hostNetwork and IP-less pods, deletions.
	createPod(t, k, "default", "web-0", "n1", podOpts{hostname: "web-0", subdomain: "web"}, "10.1.1.5", "fd00:1:0:1::5")
	waitValue(t, c, meshapi.EndpointKey(cluster, "default", "web-0"),
		`{"cluster":"east","clusterID":7,"namespace":"default","name":"web-0","node":"n1","ips":["10.1.1.5","fd00:1:0:1::5"],"hostname":"web-0","subdomain":"web"}`)
	setPodIPs(t, k, "default", "web-0", "10.1.1.6")
	waitValue(t, c, meshapi.EndpointKey(cluster, "default", "web-0"),
		`{"cluster":"east","clusterID":7,"namespace":"default","name":"web-0","node":"n1","ips":["10.1.1.6"],"hostname":"web-0","subdomain":"web"}`)

	createPod(t, k, "default", "host", "n1", podOpts{hostNetwork: true}, "192.168.1.10")
	createPod(t, k, "default", "pending", "n1", podOpts{})
	createPod(t, k, "default", "plain", "n1", podOpts{}, "10.1.1.7")
	waitValue(t, c, meshapi.EndpointKey(cluster, "default", "plain"),
		`{"cluster":"east","clusterID":7,"namespace":"default","name":"plain","node":"n1","ips":["10.1.1.7"],"hostname":"","subdomain":""}`)
	// "plain" was created last and is there, so the others were seen.
	for _, name := range []string{"host", "pending"} {
		v, err := value(ctx, c, meshapi.EndpointKey(cluster, "default", name))
		require.NoError(t, err)
		require.Empty(t, v, "pod %s is not exported", name)
	}
	require.Equal(t, 1.0, gauge(t, h.srv.SyncMetrics().NotExported.WithLabelValues(meshapi.KindEndpoints, kubesync.ReasonHostNetwork)))
	require.Equal(t, 1.0, gauge(t, h.srv.SyncMetrics().NotExported.WithLabelValues(meshapi.KindEndpoints, kubesync.ReasonNoIP)))

	setPodIPs(t, k, "default", "pending", "10.1.1.8")
	waitValue(t, c, meshapi.EndpointKey(cluster, "default", "pending"),
		`{"cluster":"east","clusterID":7,"namespace":"default","name":"pending","node":"n1","ips":["10.1.1.8"],"hostname":"","subdomain":""}`)
	setPodIPs(t, k, "default", "pending")
	waitValue(t, c, meshapi.EndpointKey(cluster, "default", "pending"), "")

	deletePod(t, k, "default", "plain")
	waitValue(t, c, meshapi.EndpointKey(cluster, "default", "plain"), "")

	// Services: see export_test.go; one exported service here so that the
	// check below covers a service entry too.
	createService(t, k, "default", "web", corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone,
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}})
	createSlice(t, k, "default", "web", "web-abc", discoveryv1.Endpoint{Addresses: []string{"10.1.1.6"}, NodeName: ptr.To("n1"),
		Hostname: ptr.To("web-0"), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	exportTime := createExport(t, h, "default", "web")
	waitValue(t, c, meshapi.ServiceKey(cluster, "default", "web"),
		`{"cluster":"east","clusterID":7,"namespace":"default","name":"web","headless":true,"ports":[{"name":"http","port":80,"protocol":"TCP"}],`+
			`"endpoints":[{"ip":"10.1.1.6","hostname":"web-0","node":"n1","ready":true,"serving":true}],`+
			`"exportTime":"`+exportTime+`","type":"Headless","sessionAffinity":"None","ipFamilies":`+families(t, k, "default", "web")+`}`)

	// Everything published decodes and validates as an agent would check it.
	resp, err := c.Get(ctx, meshapi.Root, clientv3.WithPrefix())
	require.NoError(t, err)
	cfg, err := meshapi.DecodeClusterConfig([]byte(mustValue(t, c, meshapi.ClusterConfigKey(cluster))))
	require.NoError(t, err)
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case strings.HasPrefix(key, meshapi.NodesPrefix):
			n, err := meshapi.DecodeNode(kv.Value)
			require.NoError(t, err)
			parts, err := meshapi.ParseNodeKey(key)
			require.NoError(t, err)
			require.NoError(t, meshapi.ValidateNodeFor(parts, n, cfg))
		case strings.HasPrefix(key, meshapi.EndpointsPrefix):
			e, err := meshapi.DecodeEndpoint(kv.Value)
			require.NoError(t, err)
			parts, err := meshapi.ParseEndpointKey(key)
			require.NoError(t, err)
			require.NoError(t, meshapi.ValidateEndpointFor(parts, e, cfg))
		case strings.HasPrefix(key, meshapi.ServicesPrefix):
			s, err := meshapi.DecodeService(kv.Value)
			require.NoError(t, err)
			parts, err := meshapi.ParseServiceKey(key)
			require.NoError(t, err)
			require.NoError(t, meshapi.ValidateServiceFor(parts, s, cfg))
		}
	}

	// /metrics serves the sync's counters and etcd's own metrics.
	code, body := httpGet(t, "http://"+h.srv.HealthAddr()+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `podmesh_apiserver_etcd_writes_total{op="put"}`)
	require.Contains(t, body, "etcd_debugging_mvcc_watcher_total")
}

func mustValue(t *testing.T, c *clientv3.Client, key string) string {
	t.Helper()
	v, err := value(t.Context(), c, key)
	require.NoError(t, err)
	require.NotEmpty(t, v, key)
	return v
}

var patientRetry = wait.Backoff{Steps: 50, Duration: 5 * time.Millisecond, Factor: 1.2, Jitter: 0.5, Cap: 200 * time.Millisecond}

func TestBurstOfPodUpdatesIsCoalesced(t *testing.T) {
	h := newHarness(t)
	// A key is written at most once per coalesce window, so the number of
	// writes depends on how long the burst takes. A 500 ms window keeps the
	// assertion below far from that dependency even on a loaded machine
	// (the burst would have to take over a minute to reach it).
	h.cfg.CoalesceDelay = 500 * time.Millisecond
	h.start(t)
	c := h.client(t)
	k := h.k
	createNode(t, k, "n1", "192.168.1.10", "10.1.1.0/24")
	const pods, updates = 4, 1000 // updates divisible by pods*writersPerPod
	for i := range pods {
		createPod(t, k, "default", fmt.Sprintf("p%d", i), "n1", podOpts{}, fmt.Sprintf("10.1.1.%d", i+1))
	}
	for i := range pods {
		waitValue(t, c, meshapi.EndpointKey(cluster, "default", fmt.Sprintf("p%d", i)),
			fmt.Sprintf(`{"cluster":"east","clusterID":7,"namespace":"default","name":"p%d","node":"n1","ips":["10.1.1.%d"],"hostname":"","subdomain":""}`, i, i+1))
	}
	puts := h.srv.SyncMetrics().EtcdWrites.WithLabelValues("put")
	before := counter(t, puts)

	// Five writers per pod patch its IP concurrently (merge patches do not
	// conflict); every update changes the exported value. Which update is
	// last is up to the API server, so the expected final state is read
	// back from Kubernetes afterwards.
	const writersPerPod = 5
	var wg sync.WaitGroup
	errs := make(chan error, pods*writersPerPod)
	for i := range pods {
		for w := range writersPerPod {
			wg.Go(func() {
				for u := range updates / pods / writersPerPod {
					ip := fmt.Sprintf("10.1.%d.%d", 10+i, (w*(updates/pods/writersPerPod)+u)%250+1)
					// The API server gives up on a patch after a few internal
					// conflicts; concurrent writers hit that, so retry patiently.
					err := retry.RetryOnConflict(patientRetry, func() error {
						return patchPodIPs(context.Background(), k, "default", fmt.Sprintf("p%d", i), ip)
					})
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for i := range pods {
		p, err := k.CoreV1().Pods("default").Get(t.Context(), fmt.Sprintf("p%d", i), metav1.GetOptions{})
		require.NoError(t, err)
		require.Len(t, p.Status.PodIPs, 1)
		waitValue(t, c, meshapi.EndpointKey(cluster, "default", fmt.Sprintf("p%d", i)),
			fmt.Sprintf(`{"cluster":"east","clusterID":7,"namespace":"default","name":"p%d","node":"n1","ips":["%s"],"hostname":"","subdomain":""}`, i, p.Status.PodIPs[0].IP))
	}
	writes := counter(t, puts) - before
	t.Logf("%d pod updates caused %.0f etcd writes (heartbeats included)", updates, writes)
	require.Less(t, writes, float64(updates)/2, "a burst of updates of one key is coalesced into far fewer writes")
}

// The proxy as wired by the server (certificates from files, allow-list
// from the flag) refuses writes and peers that are not allowed. The proxy
// package's tests cover every refused RPC and certificate case.
func TestServerProxyIsReadOnlyAndChecksPeers(t *testing.T) {
	h := newHarness(t)
	h.start(t)
	ctx := t.Context()
	c := h.client(t)
	before, err := c.Get(ctx, meshapi.Root, clientv3.WithPrefix())
	require.NoError(t, err)
	_, err = c.Put(ctx, meshapi.NodeKey(cluster, "evil"), "{}")
	require.Equal(t, codes.PermissionDenied, status.Code(err), "put: %v", err)
	_, err = c.Delete(ctx, meshapi.Root, clientv3.WithPrefix())
	require.Equal(t, codes.PermissionDenied, status.Code(err), "delete: %v", err)
	v, err := value(ctx, c, meshapi.NodeKey(cluster, "evil"))
	require.NoError(t, err)
	require.Empty(t, v)
	after, err := c.Get(ctx, meshapi.ClusterConfigKey(cluster))
	require.NoError(t, err)
	require.NotEmpty(t, after.Kvs, "nothing was deleted")
	require.Greater(t, len(before.Kvs), 0)

	refused := h.srv.ProxyMetrics().HandshakeFailures.WithLabelValues("peer_not_allowed")
	south, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"https://" + h.srv.ProxyAddr()},
		TLS:         h.pki.ClientTLS(t, h.pki.IssueClient(t, "remote-south")),
		DialTimeout: 5 * time.Second,
	})
	require.NoError(t, err)
	defer south.Close()
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = south.Get(rctx, meshapi.ClusterConfigKey(cluster))
	require.Error(t, err, "a CN that is not in --allowed-peers cannot read")
	require.Eventually(t, func() bool { return counter(t, refused) > 0 }, waitFor, 20*time.Millisecond)
}
