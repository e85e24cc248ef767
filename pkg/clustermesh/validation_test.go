package clustermesh_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestMeshRefusesInvalidEntries proves each per-entry rule: the bad entry
// never reaches the desired set, is counted under its reason and named in
// status, and the rest of the cluster keeps working.
func TestMeshRefusesInvalidEntries(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	base := want("east", 2, "10.2.1.0/24 via 192.168.1.1")
	m.waitEntries(t, "east", base)

	node := func(mut func(n *meshapi.Node)) string {
		n := east.Node(t, "bad", []string{"192.168.1.66"}, "10.2.66.0/24")
		mut(&n)
		b, err := meshapi.Encode(n)
		require.NoError(t, err)
		return string(b)
	}
	endpoint := func(mut func(e *meshapi.Endpoint)) string {
		e := east.Endpoint(t, "default", "bad", "e1", "10.2.99.1")
		mut(&e)
		b, err := meshapi.Encode(e)
		require.NoError(t, err)
		return string(b)
	}
	nodeKey := meshapi.NodeKey("east", "bad")
	epKey := meshapi.EndpointKey("east", "default", "bad")

	tests := []struct {
		name, key, value, reason string
	}{
		{"node advertising 0.0.0.0/0", nodeKey, node(func(n *meshapi.Node) { n.PodCIDRs = append(n.PodCIDRs, mustPrefix("0.0.0.0/0")) }), clustermesh.ReasonInvalidPrefix},
		{"node pod CIDR outside the cluster's", nodeKey, node(func(n *meshapi.Node) { n.PodCIDRs = append(n.PodCIDRs, mustPrefix("10.9.0.0/24")) }), clustermesh.ReasonOutOfRange},
		{"node pod CIDR overlapping the local cluster", nodeKey, node(func(n *meshapi.Node) { n.PodCIDRs = []netipPrefix{mustPrefix("10.0.5.0/24")} }), clustermesh.ReasonOutOfRange},
		{"node value names another cluster than its key", nodeKey, node(func(n *meshapi.Node) { n.Cluster = "west" }), clustermesh.ReasonMismatch},
		{"node with another cluster's ID", nodeKey, node(func(n *meshapi.Node) { n.ClusterID = 3 }), clustermesh.ReasonMismatch},
		{"node value names another node than its key", nodeKey, node(func(n *meshapi.Node) { n.Name = "other" }), clustermesh.ReasonMismatch},
		{"node without internal IP", nodeKey, node(func(n *meshapi.Node) { n.InternalIPs = nil }), clustermesh.ReasonMissingField},
		{"node with a loopback internal IP", nodeKey, node(func(n *meshapi.Node) { n.InternalIPs = []netipAddr{mustAddr("127.0.0.1")} }), clustermesh.ReasonInvalidAddress},
		{"oversized node value", nodeKey, `{"cluster":"east","pad":"` + strings.Repeat("x", meshapi.MaxValueSize) + `"}`, clustermesh.ReasonTooLarge},
		{"malformed node JSON", nodeKey, `{"cluster":`, clustermesh.ReasonMalformed},
		{"node key with an extra segment", meshapi.NodeKey("east", "a") + "/b", node(func(*meshapi.Node) {}), clustermesh.ReasonInvalidKey},
		{"endpoint IP outside the cluster's CIDRs", epKey, endpoint(func(e *meshapi.Endpoint) { e.IPs = append(e.IPs, mustAddr("10.9.0.1")) }), clustermesh.ReasonOutOfRange},
		{"endpoint IP in the local cluster", epKey, endpoint(func(e *meshapi.Endpoint) { e.IPs = []netipAddr{mustAddr("10.0.0.7")} }), clustermesh.ReasonOutOfRange},
		{"endpoint value names another cluster than its key", epKey, endpoint(func(e *meshapi.Endpoint) { e.Cluster = "west" }), clustermesh.ReasonMismatch},
		{"endpoint value names another pod than its key", epKey, endpoint(func(e *meshapi.Endpoint) { e.Name = "other" }), clustermesh.ReasonMismatch},
		{"oversized endpoint value", epKey, `{"pad":"` + strings.Repeat("x", meshapi.MaxValueSize) + `"}`, clustermesh.ReasonTooLarge},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := m.remote(t, "east").InvalidTotal[tt.reason]
			east.Put(t, tt.key, tt.value)
			// A valid entry written after the bad one under the same prefix
			// proves the bad one has been processed by the time it shows.
			sentinel := mustAddr("10.2.200.0").Next()
			for range i {
				sentinel = sentinel.Next()
			}
			wantNow := copyEntries(base)
			if strings.HasPrefix(tt.key, meshapi.NodesPrefix) {
				east.PutNode(t, "sentinel", "192.168.1.99", sentinel.String()+"/32")
			} else {
				east.PutEndpoint(t, "default", "sentinel", "e1", sentinel.String())
			}
			add(wantNow, "east", 2, sentinel.String()+"/32 via 192.168.1"+map[bool]string{true: ".99", false: ".1"}[strings.HasPrefix(tt.key, meshapi.NodesPrefix)])
			m.waitEntries(t, "east", wantNow)

			st := m.remote(t, "east")
			require.Equal(t, before+1, st.InvalidTotal[tt.reason], "counted under %s: %+v", tt.reason, st.InvalidTotal)
			require.Equal(t, 1, st.InvalidByReason[tt.reason])
			require.Contains(t, st.LastInvalid, tt.key)
			require.True(t, st.Ready, "one bad entry does not make the cluster unready")

			east.Delete(t, tt.key)
			east.Delete(t, meshapi.NodeKey("east", "sentinel"))
			east.Delete(t, meshapi.EndpointKey("east", "default", "sentinel"))
			m.waitEntries(t, "east", base)
			eventually(t, 10*time.Second, "invalid entry forgotten", func() bool { return m.remote(t, "east").InvalidEntries == 0 })
		})
	}

	t.Run("refusals are exported as metrics by reason", func(t *testing.T) {
		got := map[string]float64{}
		for _, sm := range m.gather(t, "podmesh_agent_remote_cluster_invalid_entries_total") {
			require.Equal(t, "east", sm.labels["cluster"])
			got[sm.labels["reason"]] = sm.value
		}
		for _, tt := range tests {
			require.GreaterOrEqual(t, got[tt.reason], 1.0, "reason %s", tt.reason)
		}
		require.Equal(t, 2.0, got[clustermesh.ReasonTooLarge], "one oversized node and one oversized endpoint")
	})

	t.Run("a valid node that turns invalid is withdrawn", func(t *testing.T) {
		east.PutNode(t, "flip", "192.168.1.77", "10.2.77.0/24")
		m.waitEntries(t, "east", add(copyEntries(base), "east", 2, "10.2.77.0/24 via 192.168.1.77"))
		n := east.Node(t, "flip", []string{"192.168.1.77"}, "10.2.77.0/24", "0.0.0.0/0")
		east.PutJSON(t, meshapi.NodeKey("east", "flip"), n)
		m.waitEntries(t, "east", base)
		require.Equal(t, 1, m.remote(t, "east").InvalidByReason[clustermesh.ReasonInvalidPrefix])
		east.Delete(t, meshapi.NodeKey("east", "flip"))
	})
}

// refusedCluster starts a mesh with the remotes given and waits until name
// is refused with a reason containing every part.
func waitRefused(t *testing.T, m *testMesh, name string, parts ...string) clustermesh.RemoteStatus {
	t.Helper()
	var st clustermesh.RemoteStatus
	eventually(t, 20*time.Second, name+" refused", func() bool {
		st = m.remote(t, name)
		if st.Ready || !strings.HasPrefix(st.Reason, "refused: ") {
			return false
		}
		for _, p := range parts {
			if !strings.Contains(st.Reason, p) {
				return false
			}
		}
		return true
	})
	require.Empty(t, m.rec.Cluster(name), "nothing of a refused cluster in the desired set")
	require.Equal(t, st.Reason, st.LastError)
	return st
}

func TestMeshRefusesRemoteAdvertisingDefaultRoute(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	cfg := east.Config
	cfg.PodCIDRs = append(cfg.PodCIDRs, mustPrefix("0.0.0.0/0"))
	east.PutJSON(t, meshapi.ClusterConfigKey("east"), cfg)
	east.PutJSON(t, meshapi.NodeKey("east", "e1"), east.Node(t, "e1", []string{"192.168.1.1"}, "0.0.0.0/0"))
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	waitRefused(t, m, "east", "0.0.0.0/0", "default route")
}

func TestMeshRefusesRemoteOverlappingTheLocalCluster(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.0.128.0/17")
	east.PutNode(t, "e1", "192.168.1.1", "10.0.129.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	waitRefused(t, m, "east", "10.0.128.0/17 of east overlaps 10.0.0.0/16 of the local cluster local")
}

func TestMeshRefusesRemoteUsingTheLocalClusterID(t *testing.T) {
	east := cmt.StartRemote(t, "east", localID, "10.2.0.0/16")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	waitRefused(t, m, "east", "cluster ID 1 of east is the local cluster's (local)")
}

func TestMeshRefusesRemoteWithUnknownFormatVersion(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	cfg := east.Config
	cfg.FormatVersion = 2
	east.PutJSON(t, meshapi.ClusterConfigKey("east"), cfg)
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	waitRefused(t, m, "east", "format version 2")
}

// TestMeshRefusesRemoteUsingAnotherConnectedClustersName points a second
// file, "south", at east's etcd: east's data must not be taken for south's.
func TestMeshRefusesRemoteUsingAnotherConnectedClustersName(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	m.waitReady(t, "east")

	files := dir.Files()
	files["south"] = files["east"] // same endpoint and certificates as east
	dir.Set(t, files)
	waitRefused(t, m, "south", "remote publishes cluster config for east, not south")

	// The remote now also publishes a config under south's key that claims
	// to be east.
	east.PutJSON(t, meshapi.ClusterConfigKey("south"), east.Config)
	waitRefused(t, m, "south", "cluster config of file south names cluster east")

	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	require.True(t, m.remote(t, "east").Ready, "east is unaffected")
}

// TestMeshWithdrawsARemoteWhoseConfigTurnsInvalid: a connected remote that
// starts to claim 0.0.0.0/0 is refused and its entries withdrawn, and its
// claim is released for others; once it publishes a valid config again it
// is admitted again.
func TestMeshWithdrawsARemoteWhoseConfigTurnsInvalid(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))

	bad := east.Config
	bad.PodCIDRs = append(bad.PodCIDRs, mustPrefix("0.0.0.0/0"))
	east.PutJSON(t, meshapi.ClusterConfigKey("east"), bad)
	waitRefused(t, m, "east", "invalid cluster config", "0.0.0.0/0")

	// Its ID is free again: another cluster with ID 2 is admitted.
	west := cmt.StartRemote(t, "west", 2, "10.3.0.0/16")
	west.PutNode(t, "w1", "192.168.2.1", "10.3.1.0/24")
	dir.Add(t, west)
	m.waitEntries(t, "west", want("west", 2, "10.3.1.0/24 via 192.168.2.1"))
	dir.Remove(t, "west")

	east.PutJSON(t, meshapi.ClusterConfigKey("east"), east.Config)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	m.waitReady(t, "east")
}

// TestMeshRevalidatesWhenTheRemoteConfigChanges: entries are checked against
// the config the remote declares now, so a node refused as out of range is
// accepted once the remote declares the wider range, without counting the
// change as a failure.
func TestMeshRevalidatesWhenTheRemoteConfigChanges(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	east.PutNode(t, "e2", "192.168.1.2", "10.3.1.0/24") // outside the declared range
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	m.waitReady(t, "east")
	require.Equal(t, 1, m.remote(t, "east").InvalidByReason[clustermesh.ReasonOutOfRange])

	wider := east.Config
	wider.PodCIDRs = append(wider.PodCIDRs, mustPrefix("10.3.0.0/16"))
	east.PutJSON(t, meshapi.ClusterConfigKey("east"), wider)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.3.1.0/24 via 192.168.1.2"))
	m.waitReady(t, "east")
	st := m.remote(t, "east")
	require.Zero(t, st.InvalidEntries)
	require.Zero(t, st.Failures, "a config change is not a failure")
	for _, c := range m.rec.Changes() {
		require.Empty(t, c.Removed, "nothing withdrawn while re-validating")
	}
}
