package server_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// A remote agent watching through the proxy across a restart of
// clustermesh-apiserver sees exactly what changed while it was down: pods
// deleted meanwhile are deleted, new ones appear, nothing that still exists
// is deleted even for an instant, and the canaries are rewritten only after
// all of that is in etcd.
func TestRestartRebuildsFromKubernetesWithoutSpuriousDeletions(t *testing.T) {
	h := newHarness(t)
	h.start(t)
	k := h.k
	createNode(t, k, "n1", "192.168.1.10", "10.1.1.0/24")
	for i := 1; i <= 5; i++ {
		createPod(t, k, "default", fmt.Sprintf("p%d", i), "n1", podOpts{}, fmt.Sprintf("10.1.1.%d", i))
	}
	c := h.client(t)
	epKey := func(name string) string { return meshapi.EndpointKey(cluster, "default", name) }
	for i := 1; i <= 5; i++ {
		waitValue(t, c, epKey(fmt.Sprintf("p%d", i)),
			fmt.Sprintf(`{"cluster":"east","clusterID":7,"namespace":"default","name":"p%d","node":"n1","ips":["10.1.1.%d"],"hostname":"","subdomain":""}`, i, i))
	}
	svcKey := func(name string) string { return meshapi.ServiceKey(cluster, "default", name) }
	for _, name := range []string{"web", "db"} {
		createService(t, k, "default", name, corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}})
		createExport(t, h, "default", name)
	}
	mustEntryWithEndpoints(t, c, svcKey("web"), 0)
	mustEntryWithEndpoints(t, c, svcKey("db"), 0)
	list, err := c.Get(t.Context(), meshapi.Root, clientv3.WithPrefix())
	require.NoError(t, err)

	// The watcher stays open across the restart: the client reconnects to
	// the same address and resumes from the last revision it saw.
	wctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	wch := c.Watch(clientv3.WithRequireLeader(wctx), meshapi.Root, clientv3.WithPrefix(), clientv3.WithRev(list.Header.Revision+1))

	h.stop(t)
	deletePod(t, k, "default", "p1")
	deletePod(t, k, "default", "p2")
	setPodIPs(t, k, "default", "p3", "10.1.1.33")
	createPod(t, k, "default", "p6", "n1", podOpts{}, "10.1.1.6")
	deleteExport(t, h, "default", "db") // the Service stays, unexported
	h.start(t)

	// Collect events until all three canaries have been rewritten.
	canaries := map[string]int64{}
	var events []*clientv3.Event
	deadline := time.After(waitFor)
	for len(canaries) < len(meshapi.SyncedKinds) {
		select {
		case resp, ok := <-wch:
			require.True(t, ok, "watch closed")
			require.NoError(t, resp.Err())
			for _, ev := range resp.Events {
				events = append(events, ev)
				key := string(ev.Kv.Key)
				if len(key) > len(meshapi.SyncedPrefix) && key[:len(meshapi.SyncedPrefix)] == meshapi.SyncedPrefix && ev.Type == mvccpb.PUT {
					canaries[key] = ev.Kv.ModRevision
				}
			}
		case <-deadline:
			t.Fatalf("canaries not rewritten; saw %d events", len(events))
		}
	}

	alive := []string{epKey("p3"), epKey("p4"), epKey("p5"), epKey("p6"), meshapi.NodeKey(cluster, "n1"), svcKey("web")}
	deleted := map[string]int64{}
	puts := map[string]int64{}
	for _, ev := range events {
		key := string(ev.Kv.Key)
		if ev.Type == mvccpb.DELETE {
			require.NotContains(t, alive, key, "a key that exists in Kubernetes was deleted (revision %d)", ev.Kv.ModRevision)
			deleted[key] = ev.Kv.ModRevision
		} else {
			puts[key] = ev.Kv.ModRevision
		}
	}
	require.Contains(t, deleted, epKey("p1"))
	require.Contains(t, deleted, epKey("p2"))
	require.Contains(t, puts, epKey("p3"), "the IP change made while down is published")
	require.Contains(t, puts, epKey("p6"), "the pod created while down is published")
	epCanary := canaries[meshapi.SyncedKey(cluster, meshapi.KindEndpoints)]
	for _, key := range []string{epKey("p1"), epKey("p2")} {
		require.Less(t, deleted[key], epCanary, "%s deleted before the endpoints canary", key)
	}
	require.Contains(t, deleted, svcKey("db"), "a service whose export went while down is withdrawn")
	require.Less(t, deleted[svcKey("db")], canaries[meshapi.SyncedKey(cluster, meshapi.KindServices)], "before the services canary")
	for _, key := range []string{epKey("p3"), epKey("p6")} {
		require.Less(t, puts[key], epCanary, "%s written before the endpoints canary", key)
	}

	// At the canary's revision the endpoints are exactly Kubernetes' pods.
	at, err := c.Get(t.Context(), meshapi.EndpointsClusterPrefix(cluster), clientv3.WithPrefix(), clientv3.WithRev(epCanary))
	require.NoError(t, err)
	var keys []string
	for _, kv := range at.Kvs {
		keys = append(keys, string(kv.Key))
	}
	slices.Sort(keys)
	require.Equal(t, []string{epKey("p3"), epKey("p4"), epKey("p5"), epKey("p6")}, keys)
	waitValue(t, c, epKey("p3"),
		`{"cluster":"east","clusterID":7,"namespace":"default","name":"p3","node":"n1","ips":["10.1.1.33"],"hostname":"","subdomain":""}`)
}
