package clustermesh_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

const (
	localName = "local"
	localID   = 1
)

var (
	localCIDRs  = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	localTunnel = netip.MustParseAddr("192.168.0.1")
	fastTiming  = cmt.FastTiming
)

type testMesh struct {
	*clustermesh.Mesh
	rec *cmt.Recorder
	dir *cmt.ConfigDir
	// stop ends the mesh (as an agent restart would) and waits; the test's
	// cleanup calls it too.
	stop func()
}

func startMesh(t *testing.T, dir *cmt.ConfigDir, mutate ...func(*clustermesh.Options)) *testMesh {
	t.Helper()
	rec := cmt.NewRecorder()
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	log.SetOutput(cmt.LogWriter{TB: t})
	opts := clustermesh.Options{
		LocalCluster: localName, LocalClusterID: localID, LocalPodCIDRs: localCIDRs, LocalTunnelIP: localTunnel,
		ConfigDir: dir.Dir, Desired: rec, Timing: fastTiming, Log: log,
	}
	for _, f := range mutate {
		f(&opts)
	}
	m, err := clustermesh.New(opts)
	require.NoError(t, err)
	stop := cmt.Run(t, m.Run, 30*time.Second)
	return &testMesh{Mesh: m, rec: rec, dir: dir, stop: stop}
}

// eventually waits until cond holds, failing the test after d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, d, 10*time.Millisecond, "waiting for %s", what)
}

func (m *testMesh) remote(t *testing.T, name string) clustermesh.RemoteStatus {
	t.Helper()
	for _, r := range m.Status().Remotes {
		if r.Cluster == name {
			return r
		}
	}
	return clustermesh.RemoteStatus{Cluster: name, Reason: "not configured"}
}

func (m *testMesh) waitReady(t *testing.T, name string) {
	t.Helper()
	eventually(t, 20*time.Second, name+" ready", func() bool { return m.remote(t, name).Ready })
}

func (m *testMesh) waitEntries(t *testing.T, cluster string, want map[netip.Prefix]datapath.Entry) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, sorted(want), sorted(m.rec.Cluster(cluster)), "entries of %s (status %+v)", cluster, m.remote(t, cluster))
	}, 20*time.Second, 10*time.Millisecond)
}

func sorted(m map[netip.Prefix]datapath.Entry) []string {
	out := make([]string, 0, len(m))
	for _, e := range m {
		out = append(out, e.String())
	}
	sortStrings(out)
	return out
}

func sortStrings(s []string) { slices.Sort(s) }

// want builds an expected entry set: "prefix via ip" pairs.
func want(cluster string, id uint32, pairs ...string) map[netip.Prefix]datapath.Entry {
	out := make(map[netip.Prefix]datapath.Entry)
	for _, p := range pairs {
		prefix, via, _ := strings.Cut(p, " via ")
		e := datapath.Entry{Prefix: netip.MustParsePrefix(prefix), TunnelEndpoint: netip.MustParseAddr(via), ClusterID: id, Cluster: cluster}
		out[e.Prefix] = e
	}
	return out
}

func TestMeshSyncsThreeRemotesIntoDesiredSet(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	west := cmt.StartRemote(t, "west", 3, "10.3.0.0/16", "fd00:3::/48")
	north := cmt.StartRemote(t, "north", 4, "10.4.0.0/16")

	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	east.PutNode(t, "e2", "192.168.1.2", "10.2.2.0/24")
	east.PutEndpoint(t, "default", "covered", "e1", "10.2.1.5")     // inside e1's CIDR: no entry of its own
	east.PutEndpoint(t, "default", "uncovered", "e1", "10.2.200.7") // outside: a /32 via e1
	west.PutJSON(t, meshapi.NodeKey("west", "w1"), west.Node(t, "w1", []string{"fd00::10", "192.168.2.1"}, "10.3.1.0/24", "fd00:3:0:1::/64"))
	west.PutEndpoint(t, "kube-system", "v6", "w1", "fd00:3::99")
	north.PutNode(t, "n1", "192.168.3.1") // cloud IPAM: no node CIDRs
	north.PutEndpoint(t, "default", "a", "n1", "10.4.0.10")
	north.PutEndpoint(t, "default", "b", "n1", "10.4.0.11", "10.4.0.12")
	north.PutEndpoint(t, "default", "orphan", "n9", "10.4.0.13") // unknown node: skipped

	dir := cmt.NewConfigDir(t)
	for _, r := range []*cmt.Remote{east, west, north} {
		dir.Add(t, r)
	}
	m := startMesh(t, dir)

	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.2.0/24 via 192.168.1.2", "10.2.200.7/32 via 192.168.1.1"))
	m.waitEntries(t, "west", want("west", 3, "10.3.1.0/24 via 192.168.2.1", "fd00:3:0:1::/64 via 192.168.2.1", "fd00:3::99/128 via 192.168.2.1"))
	m.waitEntries(t, "north", want("north", 4, "10.4.0.10/32 via 192.168.3.1", "10.4.0.11/32 via 192.168.3.1", "10.4.0.12/32 via 192.168.3.1"))
	for _, name := range []string{"east", "west", "north"} {
		m.waitReady(t, name)
	}
	eventually(t, 10*time.Second, "pruning allowed", m.rec.PruneAllowed)

	st := m.remote(t, "north")
	require.Equal(t, 1, st.Nodes)
	require.Equal(t, 3, st.Endpoints, "%+v", st)
	require.Equal(t, 3, st.Prefixes)
	require.Equal(t, 1, st.EndpointsWithoutNode)
	require.Equal(t, uint32(4), st.ClusterID)

	// Watched changes reach the desired set.
	east.Delete(t, meshapi.NodeKey("east", "e2"))
	east.PutNode(t, "e3", "192.168.1.3", "10.2.3.0/24")
	north.PutNode(t, "n9", "192.168.3.9")
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.3.0/24 via 192.168.1.3", "10.2.200.7/32 via 192.168.1.1"))
	m.waitEntries(t, "north", want("north", 4, "10.4.0.10/32 via 192.168.3.1", "10.4.0.11/32 via 192.168.3.1", "10.4.0.12/32 via 192.168.3.1", "10.4.0.13/32 via 192.168.3.9"))

	// The hand-off the datapath reads holds the union of the three.
	snap := m.rec.Desired.Snapshot()
	require.Len(t, snap.Entries, 3+3+4)
	require.True(t, snap.PruneAllowed)
}

func TestMeshAllowsPruneOnlyAfterEveryRemoteSynced(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	west := cmt.StartRemote(t, "west", 3, "10.3.0.0/16")
	west.Delete(t, meshapi.SyncedKey("west", meshapi.KindEndpoints)) // west's apiserver has not finished its first sync
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	west.PutNode(t, "w1", "192.168.2.1", "10.3.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	dir.Add(t, west)
	m := startMesh(t, dir)

	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	eventually(t, 10*time.Second, "west waiting for its canary", func() bool {
		return m.remote(t, "west").Reason == "waiting for sync canaries: endpoints"
	})
	require.False(t, m.rec.PruneAllowed(), "west has not synced")
	require.Empty(t, m.rec.Cluster("west"), "nothing from west before its canaries")

	west.Put(t, meshapi.SyncedKey("west", meshapi.KindEndpoints), meshapi.FormatTime(time.Now()))
	m.waitEntries(t, "west", want("west", 3, "10.3.1.0/24 via 192.168.2.1"))
	eventually(t, 10*time.Second, "pruning allowed", m.rec.PruneAllowed)
	require.True(t, m.Status().Synced)
}

func TestMeshAllowsPruneAfterSyncTimeout(t *testing.T) {
	dir := cmt.NewConfigDir(t)
	files := dir.Files()
	files["broken"] = []byte("endpoints: [https://127.0.0.1:1\n") // never syncs
	dir.Set(t, files)
	m := startMesh(t, dir, func(o *clustermesh.Options) { o.SyncTimeout = 300 * time.Millisecond })
	eventually(t, 10*time.Second, "pruning allowed by the timeout", m.rec.PruneAllowed)
	require.Contains(t, m.Status().SyncReason, "sync timeout")
}

func TestMeshMarksStaleHeartbeatNotReadyAndKeepsEntries(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	const staleAfter = time.Second
	m := startMesh(t, dir, func(o *clustermesh.Options) { o.Timing.HeartbeatStaleAfter = staleAfter })
	m.waitReady(t, "east")

	// The remote apiserver stops rewriting its heartbeat.
	east.Heartbeat(t, time.Now().Add(-time.Minute))
	eventually(t, 10*time.Second, "east not ready", func() bool {
		st := m.remote(t, "east")
		return !st.Ready && strings.HasPrefix(st.Reason, "heartbeat stale")
	})
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	east.PutNode(t, "e2", "192.168.1.2", "10.2.2.0/24")
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.2.0/24 via 192.168.1.2"))

	east.Heartbeat(t, time.Now())
	m.waitReady(t, "east")
}

// TestMeshToleratesClockSkewOfALiveRemote: a remote whose clock is a minute
// behind but which keeps rewriting its heartbeat stays ready.
func TestMeshToleratesClockSkewOfALiveRemote(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.Heartbeat(t, time.Now().Add(-time.Minute))
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	const staleAfter = 2 * time.Second
	m := startMesh(t, dir, func(o *clustermesh.Options) { o.Timing.HeartbeatStaleAfter = staleAfter })
	eventually(t, 10*time.Second, "east connected with a skewed heartbeat", func() bool {
		return strings.HasPrefix(m.remote(t, "east").Reason, "heartbeat stale")
	})

	// Rewritten (skewed) heartbeats, one per staleAfter/10, for 3×staleAfter.
	skew := -time.Minute
	deadline := time.Now().Add(3 * staleAfter)
	sawReady := false
	for time.Now().Before(deadline) {
		east.Heartbeat(t, time.Now().Add(skew))
		st := m.remote(t, "east")
		if st.Ready {
			sawReady = true
		} else if sawReady {
			t.Fatalf("a live but skewed remote turned not ready: %s", st.Reason)
		}
		time.Sleep(staleAfter / 10) // the remote's rewrite period, not synchronisation
	}
	require.True(t, sawReady, "a live but skewed remote became ready")
}

// sample is one series of a gathered metric.
type sample struct {
	labels map[string]string
	value  float64 // gauge or counter
}

// gather scrapes the mesh's collector and returns the series of metric name.
func (m *testMesh) gather(t *testing.T, name string) []sample {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m.Collector()))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var out []sample
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mm := range mf.GetMetric() {
			sm := sample{labels: map[string]string{}, value: mm.GetGauge().GetValue() + mm.GetCounter().GetValue()}
			for _, l := range mm.GetLabel() {
				sm.labels[l.GetName()] = l.GetValue()
			}
			out = append(out, sm)
		}
	}
	return out
}
