package cache_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestAgentThroughCacheHoldsNodePrefixesAndOnlyPodIPsOutsideNodeCIDRs: the
// cache serves nodes and only the pod IPs outside their node's pod CIDRs;
// the agent, with one connection to its own cluster, gets exactly the
// entries direct mode computes.
func TestAgentThroughCacheHoldsNodePrefixesAndOnlyPodIPsOutsideNodeCIDRs(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	west := cmt.StartRemote(t, "west", 3, "10.3.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	east.PutNode(t, "e2", "192.168.1.2", "10.2.2.0/24")
	east.PutEndpoint(t, "default", "inside", "e1", "10.2.1.7")
	east.PutEndpoint(t, "default", "outside", "e1", "10.2.200.9")
	east.PutEndpoint(t, "default", "dual", "e2", "10.2.2.3", "10.2.201.4")
	east.PutEndpoint(t, "default", "orphan", "gone", "10.2.202.1")
	west.PutNode(t, "w1", "192.168.2.1", "10.3.1.0/24")
	tr := newTier(t, east, west)
	r := tr.start(t, "")
	r.waitSynced(t)
	a := tr.startAgent(t)

	a.waitEntries(t, "east", want("east", 2,
		"10.2.1.0/24 via 192.168.1.1", "10.2.2.0/24 via 192.168.1.2",
		"10.2.200.9/32 via 192.168.1.1", "10.2.201.4/32 via 192.168.1.2"))
	a.waitEntries(t, "west", want("west", 3, "10.3.1.0/24 via 192.168.2.1"))

	keys := r.cacheKeys(t)
	cached := cachedEntries(t, keys)
	require.NotContains(t, cached, meshapi.EndpointKey("east", "default", "inside"), "a pod IP inside its node's CIDR is not cached")
	require.NotContains(t, cached, meshapi.EndpointKey("east", "default", "orphan"), "a pod of an unknown node is not cached")
	require.Contains(t, cached, meshapi.EndpointKey("east", "default", "outside"))
	require.Contains(t, cached, meshapi.NodeKey("east", "e1"))
	require.Contains(t, keys, meshapi.CacheShardKey("east", 0, 1), "a small cluster is one shard")
	dual, err := meshapi.DecodeEndpoint([]byte(cached[meshapi.EndpointKey("east", "default", "dual")]))
	require.NoError(t, err)
	require.Equal(t, []netip.Addr{netip.MustParseAddr("10.2.201.4")}, dual.IPs, "only the IP outside the node's CIDR")
	for k := range keys {
		require.False(t, strings.HasPrefix(k, meshapi.Root), "cache keys stay under the cache root: %s", k)
	}

	eventually(t, "east ready through the cache", func() bool { s, ok := a.remote("east"); return ok && s.Ready && s.Synced })
	s, _ := a.remote("east")
	require.Equal(t, 2, s.Nodes)
	require.Equal(t, 2, s.Endpoints, "the agent holds only the endpoints with IPs outside their node's CIDRs")

	// A node's CIDR grows over a cached pod IP: the cache drops the pod.
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24", "10.2.200.0/24")
	a.waitEntries(t, "east", want("east", 2,
		"10.2.1.0/24 via 192.168.1.1", "10.2.200.0/24 via 192.168.1.1", "10.2.2.0/24 via 192.168.1.2",
		"10.2.201.4/32 via 192.168.1.2"))
	eventually(t, "the covered pod leaves the cache", func() bool {
		_, ok := cachedEntries(t, r.cacheKeys(t))[meshapi.EndpointKey("east", "default", "outside")]
		return !ok
	})
}

// TestRemoteUnreachableStaysInCacheMarkedStale: the cache keeps a cut-off
// remote's last state and marks it stale; every agent keeps its entries and
// says since when the data is not fresh; the remote's return makes it ready.
func TestRemoteUnreachableStaysInCacheMarkedStale(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	tr := newTier(t, east)
	r := tr.start(t, "")
	r.waitSynced(t)
	a := tr.startAgent(t)
	entries := want("east", 2, "10.2.1.0/24 via 192.168.1.1")
	a.waitEntries(t, "east", entries)
	eventually(t, "east ready", func() bool { s, _ := a.remote("east"); return s.Ready })

	east.Fwd.Cut()
	eventually(t, "east stale at the agent", func() bool { s, _ := a.remote("east"); return !s.Ready })
	s, _ := a.remote("east")
	require.Contains(t, s.Reason, "stale in the cache")
	require.False(t, s.Since.IsZero(), "says since when")
	require.True(t, s.Synced)
	require.Equal(t, entries, a.rec.Cluster("east"), "entries kept while the remote is unreachable")
	st, err := meshapi.DecodeCacheStatus([]byte(r.cacheKeys(t)[meshapi.CacheStatusKey("east")]))
	require.NoError(t, err)
	require.False(t, st.Ready)
	require.NotEmpty(t, st.Reason)
	require.Contains(t, cachedEntries(t, r.cacheKeys(t)), meshapi.NodeKey("east", "e1"), "the cache keeps the last state")

	east.Fwd.Restore(t)
	eventually(t, "east ready again", func() bool { s, _ := a.remote("east"); return s.Ready })
	for _, c := range a.rec.Changes() {
		require.Empty(t, c.Removed, "nothing withdrawn")
	}
}

// TestRemovedRemoteIsWithdrawnFromAgents: removing a remote's file makes
// the cache delete it and every agent withdraw it (DESIGN §6: within 1 s;
// the latency is measured by the harness, not asserted here).
func TestRemovedRemoteIsWithdrawnFromAgents(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	west := cmt.StartRemote(t, "west", 3, "10.3.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	east.PutEndpoint(t, "default", "outside", "e1", "10.2.200.9")
	west.PutNode(t, "w1", "192.168.2.1", "10.3.1.0/24")
	tr := newTier(t, east, west)
	r := tr.start(t, "")
	r.waitSynced(t)
	a := tr.startAgent(t)
	a.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.200.9/32 via 192.168.1.1"))
	westEntries := want("west", 3, "10.3.1.0/24 via 192.168.2.1")
	a.waitEntries(t, "west", westEntries)

	tr.dir.Remove(t, "east")
	a.waitEntries(t, "east", want("east", 2))
	_, listed := a.remote("east")
	require.False(t, listed, "east gone from the agent's status")
	require.Equal(t, westEntries, a.rec.Cluster("west"), "west untouched")
	eventually(t, "east gone from the cache", func() bool {
		for k := range r.cacheKeys(t) {
			if strings.Contains(k, "/east") {
				return false
			}
		}
		return true
	})
}

// TestPeersNeverReadTheCache: neither the peers' proxy nor its etcd user
// can read the cache prefix, and the local agents' etcd user reads nothing
// but the cache.
func TestPeersNeverReadTheCache(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	tr := newTier(t, east)
	r := tr.start(t, "")
	r.waitSynced(t)
	require.NotEmpty(t, r.cacheKeys(t))

	peer := (&proxytest.Env{PKI: tr.pki, Endpoint: "https://" + r.peerProxy.Addr()}).Client(t, "remote-peer")
	ctx := t.Context()
	for _, get := range []func() error{
		func() error { _, err := peer.Get(ctx, meshapi.CacheRoot, clientv3.WithPrefix()); return err },
		func() error { _, err := peer.Get(ctx, meshapi.CacheClusterConfigPrefix+"east"); return err },
		func() error { _, err := peer.Get(ctx, "p", clientv3.WithFromKey()); return err },
		func() error {
			_, err := peer.Txn(ctx).Then(clientv3.OpGet(meshapi.CacheRoot, clientv3.WithPrefix())).Commit()
			return err
		},
	} {
		require.Equal(t, codes.PermissionDenied, status.Code(get()), "peer read of the cache refused by the proxy")
	}
	wch := peer.Watch(ctx, meshapi.CacheRoot, clientv3.WithPrefix())
	wr := <-wch
	require.Error(t, wr.Err(), "peer watch of the cache refused")
	_, err := peer.Get(ctx, meshapi.Root, clientv3.WithPrefix())
	require.NoError(t, err, "the cluster's own state stays readable to peers")

	_, err = r.etcd.Reader.Get(ctx, meshapi.CacheRoot, clientv3.WithPrefix())
	require.Error(t, err, "the peers' etcd user cannot read the cache")
	_, err = r.etcd.CacheReader.Get(ctx, meshapi.Root, clientv3.WithPrefix())
	require.Error(t, err, "the local agents' etcd user reads the cache only")
	_, err = r.etcd.CacheReader.Get(ctx, meshapi.CacheRoot, clientv3.WithPrefix())
	require.NoError(t, err)
}

// TestReplicaRestartAndSwitchWithdrawNothingThatExists: the cache replica
// restarts on its data (agents resume), then a fresh replica (another etcd,
// another epoch) takes over the address; meanwhile the remote changed.
// Agents keep their entries throughout, re-list the new replica and
// withdraw only what vanished.
func TestReplicaRestartAndSwitchWithdrawNothingThatExists(t *testing.T) {
	east := startEast(t, 5)
	tr := newTier(t, east)
	r := tr.start(t, "")
	r.waitSynced(t)
	a := tr.startAgent(t)
	all := want("east", 2)
	for i := 1; i <= 5; i++ {
		add(all, "east", 2, nodeCIDR(i)+" via "+nodeIP(i))
	}
	a.waitEntries(t, "east", all)
	eventually(t, "east ready", func() bool { s, _ := a.remote("east"); return s.Ready })

	r.stop()
	eventually(t, "agent sees the cache gone", func() bool {
		s, _ := a.remote("east")
		return !s.Ready && strings.Contains(s.Reason, "cache not answering")
	})
	require.Equal(t, all, a.rec.Cluster("east"), "kept while the cache is down")

	east.Delete(t, meshapi.NodeKey("east", nodeName(5)))
	vanished := map[netip.Prefix]bool{netip.MustParsePrefix(nodeCIDR(5)): true}
	delete(all, netip.MustParsePrefix(nodeCIDR(5)))
	east.Heartbeat(t, time.Now())
	r = tr.start(t, r.dataDir) // same data: same epoch, agents resume
	a.waitEntries(t, "east", all)
	eventually(t, "east ready again", func() bool { s, _ := a.remote("east"); return s.Ready })

	east.Delete(t, meshapi.NodeKey("east", nodeName(4)))
	vanished[netip.MustParsePrefix(nodeCIDR(4))] = true
	delete(all, netip.MustParsePrefix(nodeCIDR(4)))
	r.stop()
	east.Heartbeat(t, time.Now()) // the remote stays fresh however long this test has run
	r = tr.start(t, "")           // another replica: another epoch, agents re-list
	r.waitSynced(t)
	a.waitEntries(t, "east", all)
	eventually(t, "east ready on the new replica", func() bool { s, _ := a.remote("east"); return s.Ready })

	for _, c := range a.rec.Changes() {
		for _, p := range c.Removed {
			require.True(t, vanished[p], "withdrew %s, which still exists", p)
		}
	}
}

// TestAgentSaysWhyTheCacheServesNoEntriesOfARemote: a remote the cache
// refuses (its pod CIDR overlaps the local cluster's) and one it cannot
// reach from the start are listed in every agent's status, not ready, with
// the cache's reason and no entries; the unreachable one, once reached, is
// served and ready.
func TestAgentSaysWhyTheCacheServesNoEntriesOfARemote(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	west := cmt.StartRemote(t, "west", 3, "10.3.0.0/16")
	north := cmt.StartRemote(t, "north", 4, "10.1.128.0/17")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	west.PutNode(t, "w1", "192.168.2.1", "10.3.1.0/24")
	north.PutNode(t, "n1", "192.168.3.1", "10.1.129.0/24")
	west.Fwd.Cut()
	tr := newTier(t, east, west, north)
	r := tr.start(t, "")
	r.waitSynced(t)
	a := tr.startAgent(t)
	a.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))

	for name, why := range map[string]string{"north": "overlaps 10.1.0.0/16 of the local cluster", "west": ""} {
		eventually(t, name+" listed with the cache's reason", func() bool {
			s, ok := a.remote(name)
			return ok && !s.Ready && !s.Synced && strings.Contains(s.Reason, "not served by the cache: ") && strings.Contains(s.Reason, why)
		})
		require.Empty(t, a.rec.Cluster(name), "nothing of %s programmed", name)
	}

	west.Fwd.Restore(t)
	a.waitEntries(t, "west", want("west", 3, "10.3.1.0/24 via 192.168.2.1"))
	eventually(t, "west ready", func() bool { s, _ := a.remote("west"); return s.Ready && s.Reason == "" })
	s, _ := a.remote("north")
	require.Contains(t, s.Reason, "overlaps", "north still refused")
	for _, c := range a.rec.Changes() {
		require.Empty(t, c.Removed, "nothing withdrawn")
	}
}

// TestAgentAgreesWithTheRemoteAfterChurnThroughReplicaChanges: a remote
// changes 400 times (nodes added, moved and deleted; pod IPs outside their
// node's CIDR added, moved and deleted) while its cache replica restarts on
// its data and is then replaced by a fresh one. Once the remote is quiet,
// the cache holds exactly the remote's nodes and pod IPs outside their
// node's CIDRs, and the agent's entries are exactly those an independent
// computation from the remote's final state gives: an agent and its cache
// never settle on different data.
func TestAgentAgreesWithTheRemoteAfterChurnThroughReplicaChanges(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	type node struct{ ip, cidr string }
	type pod struct{ node, ip string }
	nodes, pods := map[string]node{}, map[string]pod{}
	rng := rand.New(rand.NewPCG(12, 12))
	step := func() {
		// Node i's address and CIDR, and pod j's IP, are unique to them
		// (g varies them): no two entries ever claim one prefix.
		i, j, g := rng.IntN(30), rng.IntN(60), rng.IntN(3)
		n, p := fmt.Sprintf("e%d", i), fmt.Sprintf("p%d", j)
		switch rng.IntN(4) {
		case 0, 1:
			nd := node{fmt.Sprintf("192.168.1.%d", 1+i+30*g), fmt.Sprintf("10.2.%d.0/24", i+30*g)}
			east.PutNode(t, n, nd.ip, nd.cidr)
			nodes[n] = nd
		case 2:
			ip := fmt.Sprintf("10.2.%d.%d", 200+g, 1+j)
			on := fmt.Sprintf("e%d", rng.IntN(30))
			east.PutEndpoint(t, "default", p, on, ip)
			pods[p] = pod{on, ip}
		default:
			if rng.IntN(2) == 0 {
				east.Delete(t, meshapi.NodeKey("east", n))
				delete(nodes, n)
			} else {
				east.Delete(t, meshapi.EndpointKey("east", "default", p))
				delete(pods, p)
			}
		}
	}
	for range 50 {
		step()
	}
	tr := newTier(t, east)
	r := tr.start(t, "")
	r.waitSynced(t)
	a := tr.startAgent(t)
	for k := range 350 {
		switch k {
		case 120:
			r.stop()
			r = tr.start(t, r.dataDir) // the same replica restarts on its data
		case 240:
			r.stop()
			r = tr.start(t, "") // a fresh replica replaces it
		}
		step()
	}
	east.Heartbeat(t, time.Now())

	expect := want("east", 2)
	for _, nd := range nodes {
		add(expect, "east", 2, nd.cidr+" via "+nd.ip)
	}
	wantCached := map[string]bool{}
	for name := range nodes {
		wantCached[meshapi.NodeKey("east", name)] = true
	}
	for name, p := range pods {
		nd, ok := nodes[p.node]
		if ok && !netip.MustParsePrefix(nd.cidr).Contains(netip.MustParseAddr(p.ip)) {
			add(expect, "east", 2, p.ip+"/32 via "+nd.ip)
			wantCached[meshapi.EndpointKey("east", "default", name)] = true
		}
	}
	a.waitEntries(t, "east", expect)
	eventually(t, "the cache holds exactly the remote's nodes and outside pod IPs", func() bool {
		got := cachedEntries(t, r.cacheKeys(t))
		if len(got) != len(wantCached) {
			return false
		}
		for k := range got {
			if !wantCached[k] {
				return false
			}
		}
		return true
	})
	eventually(t, "east ready", func() bool { s, _ := a.remote("east"); return s.Ready })
}
