package cache_test

import (
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/agentstatus"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// service stands for the cache's ClusterIP Service in front of the
// replicas' cache proxies: every new connection goes to the next live
// backend (round robin, so the agents spread over the replicas
// deterministically), and a backend taken out (its pod gone) loses its
// connections.
type service struct {
	ln net.Listener

	mu       sync.Mutex // protects everything below
	backends []string
	next     int
	conns    map[string]map[net.Conn]bool // backend -> both ends of its connections
	accepted int
}

func startService(t *testing.T, backends ...string) *service {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &service{ln: ln, backends: backends, conns: make(map[string]map[net.Conn]bool)}
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, cs := range s.conns {
			for c := range cs {
				c.Close()
			}
		}
	})
	return s
}

func (s *service) addr() string { return s.ln.Addr().String() }

func (s *service) serve() {
	for {
		client, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if len(s.backends) == 0 {
			s.mu.Unlock()
			client.Close()
			continue
		}
		backend := s.backends[s.next%len(s.backends)]
		s.next++
		s.accepted++
		s.mu.Unlock()
		go s.forward(client, backend)
	}
}

func (s *service) forward(client net.Conn, backend string) {
	server, err := net.Dial("tcp", backend)
	if err != nil {
		client.Close()
		return
	}
	s.mu.Lock()
	if !slices.Contains(s.backends, backend) {
		s.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	if s.conns[backend] == nil {
		s.conns[backend] = make(map[net.Conn]bool)
	}
	s.conns[backend][client], s.conns[backend][server] = true, true
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, pair := range [][2]net.Conn{{client, server}, {server, client}} {
		wg.Go(func() {
			_, _ = io.Copy(pair[0], pair[1])
			pair[0].Close()
			pair[1].Close()
		})
	}
	wg.Wait()
	s.mu.Lock()
	delete(s.conns[backend], client)
	delete(s.conns[backend], server)
	s.mu.Unlock()
}

// remove takes backend out and cuts its connections.
func (s *service) remove(backend string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backends = slices.DeleteFunc(s.backends, func(b string) bool { return b == backend })
	for c := range s.conns[backend] {
		c.Close()
	}
}

// setBackends replaces the backends new connections go to; established
// connections stay.
func (s *service) setBackends(backends ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backends = backends
}

// cut cuts backend's connections; it stays a backend.
func (s *service) cut(backend string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns[backend] {
		c.Close()
	}
}

func (s *service) acceptedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// junkHistory moves to's revision well past from's (which may still grow:
// the caches rewrite their status keys), then writes a shard of a node that
// exists nowhere into to's cache prefix and deletes it again, more events
// apart than an agent applies in one batch (so an agent that applied this
// history would publish the node in between).
func junkHistory(t *testing.T, remote *cmt.Remote, from, to *replica) {
	t.Helper()
	ctx := t.Context()
	rev := func(r *replica) int64 {
		resp, err := r.etcd.Writer.Get(ctx, meshapi.CacheEpochKey)
		require.NoError(t, err)
		return resp.Header.Revision
	}
	bump := func(n int) {
		for range n {
			_, err := to.etcd.Writer.Put(ctx, meshapi.CacheRoot+"test-bump", time.Now().String())
			require.NoError(t, err)
		}
	}
	for target := rev(from) + 300; rev(to) <= target; {
		bump(1)
	}
	node, err := json.Marshal(remote.Node(t, "e99", []string{"192.168.1.99"}, "10.2.99.0/24"))
	require.NoError(t, err)
	shard, err := json.Marshal(meshapi.CacheShard{Format: meshapi.CacheFormat, Entries: map[string]json.RawMessage{meshapi.NodeKey("east", "e99"): node}})
	require.NoError(t, err)
	key := meshapi.CacheShardsPrefix + "east/junk"
	_, err = to.etcd.Writer.Put(ctx, key, string(shard))
	require.NoError(t, err)
	bump(1500)
	_, err = to.etcd.Writer.Delete(ctx, key)
	require.NoError(t, err)
}

// TestLostReplicaMovesOnlyItsAgentsAndTheirRelistsSpread: two cache
// replicas (two embedded etcds, each with its cache and cache proxy) behind
// one Service, twelve agents spread over them. Connections cut while the
// replicas stay, and the reconnects land on the same replica: those agents
// resume their watch there (no re-list) and still follow the remote. Then
// one replica is killed: only its agents re-list, onto the survivor; their
// listings start at random moments of the reconnect window (not all within
// 100 ms, as a fixed first backoff would make them), the survivor's agents
// do not re-list, and no agent withdraws anything that exists.
func TestLostReplicaMovesOnlyItsAgentsAndTheirRelistsSpread(t *testing.T) {
	east := startEast(t, 5)
	tr := newTier(t, east)
	replicas := make([]*replica, 2)
	addrs := make([]string, 2)
	for i := range replicas {
		tr.addr = "127.0.0.1:0"
		replicas[i] = tr.start(t, "")
		addrs[i] = replicas[i].proxy.Addr()
	}
	epochOf := map[string]int{}
	for i, r := range replicas {
		r.waitSynced(t)
		epochOf[r.cacheKeys(t)[meshapi.CacheEpochKey]] = i
	}
	require.Len(t, epochOf, 2, "each replica has its own epoch")
	svc := startService(t, addrs...)
	tr.addr = svc.addr()

	const window = 3 * time.Second
	timing := fastTiming
	timing.ReconnectWindow = window
	agents := make([]*agent, 12)
	for i := range agents {
		agents[i] = tr.startAgentTiming(t, nodeName(100+i), timing)
	}
	all := want("east", 2)
	for i := 1; i <= 5; i++ {
		add(all, "east", 2, nodeCIDR(i)+" via "+nodeIP(i))
	}
	cacheOf := func(a *agent) agentstatus.Cache { return *a.Status().Cache }
	for _, a := range agents {
		a.waitEntries(t, "east", all)
		eventually(t, "east ready", func() bool { s, _ := a.remote("east"); return s.Ready })
	}
	before := make([]agentstatus.Cache, len(agents))
	served := [2]int{}
	for i, a := range agents {
		before[i] = cacheOf(a)
		require.Contains(t, epochOf, before[i].Epoch, "agent %d reads a replica", i)
		require.Equal(t, uint64(1), before[i].Listings, "agent %d listed once", i)
		served[epochOf[before[i].Epoch]]++
	}
	t.Logf("agents per replica: %v", served)
	require.Equal(t, [2]int{6, 6}, served, "the Service spreads the agents")

	// The connections to replica 0 cut, both replicas alive, and the
	// Service sending new connections to replica 0 only: its agents
	// reconnect to the replica they listed, resume their watch there and
	// follow the remote.
	accepted := svc.acceptedCount()
	svc.setBackends(addrs[0])
	svc.cut(addrs[0])
	eventually(t, "replica 0's agents reconnected", func() bool { return svc.acceptedCount() >= accepted+served[0] })
	svc.setBackends(addrs...)
	east.PutNode(t, nodeName(6), nodeIP(6), nodeCIDR(6))
	add(all, "east", 2, nodeCIDR(6)+" via "+nodeIP(6))
	for i, a := range agents {
		a.waitEntries(t, "east", all)
		c := cacheOf(a)
		require.Equal(t, before[i].Epoch, c.Epoch, "agent %d: same replica", i)
		require.Equal(t, before[i].Listings, c.Listings, "agent %d resumed its watch instead of listing again", i)
	}

	// The survivor's history past replica 0's revision holds a node that
	// never existed in replica 0, created and deleted again. An agent whose
	// etcd client resumed its watch there from replica 0's revision would
	// receive both events and add, then withdraw, that node's prefix;
	// events over a connection whose replica is not confirmed are never
	// applied.
	junkHistory(t, east, replicas[0], replicas[1])

	// Replica 0 killed: the Service drops it, its connections break.
	var epochs [2]string
	for e, i := range epochOf {
		epochs[i] = e
	}
	victimEpoch, survivorEpoch := epochs[0], epochs[1]
	svc.remove(addrs[0])
	replicas[0].stop()
	var moved, stayed []int
	for i := range agents {
		if before[i].Epoch == victimEpoch {
			moved = append(moved, i)
		} else {
			stayed = append(stayed, i)
		}
	}
	for _, i := range moved {
		eventually(t, "a moved agent lists the survivor", func() bool {
			c := cacheOf(agents[i])
			return c.Epoch == survivorEpoch && c.Connected
		})
		agents[i].waitEntries(t, "east", all)
		eventually(t, "east ready again", func() bool { s, _ := agents[i].remote("east"); return s.Ready })
	}
	var starts []time.Time
	for _, i := range moved {
		c := cacheOf(agents[i])
		require.Equal(t, before[i].Listings+1, c.Listings, "agent %d listed the survivor once", i)
		starts = append(starts, c.SessionStart)
	}
	for _, i := range stayed {
		c := cacheOf(agents[i])
		require.Equal(t, before[i].Epoch, c.Epoch, "agent %d stays on the survivor", i)
		require.Equal(t, before[i].Listings, c.Listings, "agent %d did not list again", i)
		require.True(t, c.Connected)
	}
	first, last := slices.MinFunc(starts, time.Time.Compare), slices.MaxFunc(starts, time.Time.Compare)
	t.Logf("re-list starts of the %d moved agents spread over %s (window %s)", len(moved), last.Sub(first).Round(time.Millisecond), window)
	require.Greater(t, last.Sub(first), 100*time.Millisecond, "the moved agents' re-lists spread over the window, not all at once")

	// The survivor's own agents saw its node e99 come and go, as it did
	// there; nothing else was withdrawn anywhere, and the moved agents never
	// saw e99 at all.
	junk := netip.MustParsePrefix("10.2.99.0/24")
	for _, i := range stayed {
		for _, c := range agents[i].rec.Changes() {
			require.Empty(t, slices.DeleteFunc(c.Removed, func(p netip.Prefix) bool { return p == junk }), "agent %d withdrew something that exists", i)
		}
	}
	for _, i := range moved {
		for _, c := range agents[i].rec.Changes() {
			require.Empty(t, c.Removed, "agent %d withdrew something that exists", i)
			_, has := c.Entries[junk]
			require.False(t, has, "agent %d applied the survivor's history from the lost replica's revision", i)
		}
	}
}
