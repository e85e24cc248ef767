package clustermesh_test

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/certs"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestMeshKeepsStateWhileRemoteUnreachableAndWithdrawsOnlyVanished cuts the
// connection to a remote, changes the remote meanwhile (compacting away the
// history), and restores it: the entries stay while it is cut, the changes
// apply on reconnect, and the only prefixes ever withdrawn are those whose
// source vanished.
func TestMeshKeepsStateWhileRemoteUnreachableAndWithdrawsOnlyVanished(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	west := cmt.StartRemote(t, "west", 3, "10.3.0.0/16")
	for i := 1; i <= 20; i++ {
		east.PutNode(t, nodeName(i), nodeIP(1, i), nodeCIDR(2, i))
	}
	east.PutEndpoint(t, "default", "keep", "e1", "10.2.250.1")
	east.PutEndpoint(t, "default", "gone", "e1", "10.2.250.2")
	west.PutNode(t, "w1", "192.168.2.1", "10.3.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	dir.Add(t, west)
	m := startMesh(t, dir)

	before := want("east", 2, "10.2.250.1/32 via 192.168.1.1", "10.2.250.2/32 via 192.168.1.1")
	for i := 1; i <= 20; i++ {
		add(before, "east", 2, nodeCIDR(2, i)+" via "+nodeIP(1, i))
	}
	m.waitEntries(t, "east", before)
	m.waitReady(t, "east")
	m.waitReady(t, "west")
	failures := m.remote(t, "east").Failures

	east.Fwd.Cut()
	var st = m.remote(t, "east")
	eventually(t, 20*time.Second, "east not ready", func() bool {
		st = m.remote(t, "east")
		return !st.Ready
	})
	require.Contains(t, st.Reason, "unreachable")
	require.Greater(t, st.Failures, failures)
	require.NotEmpty(t, st.LastError)
	require.Equal(t, before, m.rec.Cluster("east"), "state kept while unreachable")
	require.True(t, m.remote(t, "west").Ready, "west unaffected")

	// Changes while east is cut off: two nodes and an endpoint vanish, one
	// node moves, one node and one endpoint appear.
	vanished := map[netip.Prefix]bool{}
	for _, i := range []int{5, 6} {
		east.Delete(t, meshapi.NodeKey("east", nodeName(i)))
		vanished[mustPrefix(nodeCIDR(2, i))] = true
	}
	east.Delete(t, meshapi.EndpointKey("east", "default", "gone"))
	vanished[mustPrefix("10.2.250.2/32")] = true
	east.PutNode(t, nodeName(7), "192.168.1.207", nodeCIDR(2, 7))
	east.PutNode(t, nodeName(21), nodeIP(1, 21), nodeCIDR(2, 21))
	east.PutEndpoint(t, "default", "new", "e2", "10.2.250.3")
	east.Etcd.Compact(t)
	require.Equal(t, before, m.rec.Cluster("east"), "state kept while unreachable")

	east.Fwd.Restore(t)
	after := want("east", 2, "10.2.250.1/32 via 192.168.1.1", "10.2.250.3/32 via 192.168.1.2")
	for i := 1; i <= 21; i++ {
		if i == 5 || i == 6 {
			continue
		}
		add(after, "east", 2, nodeCIDR(2, i)+" via "+nodeIP(1, i))
	}
	add(after, "east", 2, nodeCIDR(2, 7)+" via 192.168.1.207")
	m.waitEntries(t, "east", after)
	m.waitReady(t, "east")

	for _, c := range m.rec.Changes() {
		if c.Cluster != "east" {
			continue
		}
		for _, p := range c.Removed {
			require.True(t, vanished[p], "withdrew %s, which still exists", p)
		}
	}
}

// TestMeshListsARebuiltRemoteAgain: the remote's apiserver is replaced by
// one whose etcd starts empty behind the same address (its revisions start
// again at 1, far below the ones the agent saw) and publishes a changed
// state. The agent must list it again, not resume its watch at a revision
// the new history reaches only later, and must withdraw nothing that still
// exists on the way.
func TestMeshListsARebuiltRemoteAgain(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	east.PutNode(t, "e2", "192.168.1.2", "10.2.2.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.2.0/24 via 192.168.1.2"))
	m.waitReady(t, "east")
	for i := range 100 {
		east.Put(t, "unrelated/filler", strconv.Itoa(i))
	}
	failures := m.remote(t, "east").Failures

	east.Rebuild(t)
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	east.PutNode(t, "e2", "192.168.1.202", "10.2.2.0/24")
	east.PutNode(t, "e3", "192.168.1.3", "10.2.3.0/24")
	east.Fwd.Retarget(east.Etcd.Addr)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.2.0/24 via 192.168.1.202", "10.2.3.0/24 via 192.168.1.3"))
	m.waitReady(t, "east")
	st := m.remote(t, "east")
	require.Greater(t, st.Failures, failures, "the broken connection is counted")
	require.Contains(t, st.LastError, "connection to the remote broke")
	for _, c := range m.rec.Changes() {
		require.Empty(t, c.Removed, "withdrew %v, which still exists", c.Removed)
	}
}

func TestMeshWithdrawsRemovedFileWithinOneSecond(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	west := cmt.StartRemote(t, "west", 3, "10.3.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	west.PutNode(t, "w1", "192.168.2.1", "10.3.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	dir.Add(t, west)
	m := startMesh(t, dir)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	m.waitEntries(t, "west", want("west", 3, "10.3.1.0/24 via 192.168.2.1"))

	dir.Remove(t, "east")
	require.Eventually(t, func() bool { return len(m.rec.Cluster("east")) == 0 }, time.Second, 5*time.Millisecond,
		"east still has entries 1s after its file was removed")
	for _, r := range m.Status().Remotes {
		require.NotEqual(t, "east", r.Cluster, "east is no longer configured")
	}
	require.Equal(t, want("west", 3, "10.3.1.0/24 via 192.168.2.1"), m.rec.Cluster("west"), "west untouched")
}

// TestMeshReconnectsAfterCertificateRotation rotates east's client
// certificate through a ..data swap: first to one that east does not trust
// (proving the new files are used; the entries stay), then to a valid one.
func TestMeshReconnectsAfterCertificateRotation(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	m.waitReady(t, "east")

	rogue, err := certs.NewCA(certs.Options{CommonName: "rogue-ca"})
	require.NoError(t, err)
	files := dir.Files()
	for k, v := range cmt.RemoteFiles(t, east, rogue, "remote-local") {
		if k != "east-ca.crt" {
			files[k] = v
		}
	}
	dir.Set(t, files)
	eventually(t, 20*time.Second, "east refused at TLS with an untrusted certificate", func() bool {
		st := m.remote(t, "east")
		return !st.Ready && strings.Contains(st.LastError, "unreachable") && mentionsTLS(st.LastError)
	})
	t.Logf("with an untrusted certificate: %s", m.remote(t, "east").LastError)
	east.PutNode(t, "e2", "192.168.1.2", "10.2.2.0/24")
	require.Equal(t, want("east", 2, "10.2.1.0/24 via 192.168.1.1"), m.rec.Cluster("east"), "entries kept meanwhile")

	dir.Add(t, east) // a fresh certificate from east's CA
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1", "10.2.2.0/24 via 192.168.1.2"))
	m.waitReady(t, "east")
	for _, c := range m.rec.Changes() {
		require.Empty(t, c.Removed, "nothing withdrawn during the rotation")
	}
}

func TestMeshIsolatesABrokenFile(t *testing.T) {
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	west := cmt.StartRemote(t, "west", 3, "10.3.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	west.PutNode(t, "w1", "192.168.2.1", "10.3.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	dir.Add(t, west)
	files := dir.Files()
	files["north"] = []byte("endpoints: [https://127.0.0.1:1\n")                                   // malformed YAML
	files["south"] = append([]byte(nil), files["west"]...)                                         // valid YAML ...
	files["south"] = []byte(strings.ReplaceAll(string(files["south"]), "west.crt", "missing.crt")) // ... naming a missing certificate
	files["local"] = files["east"]                                                                 // the local cluster's own file: ignored
	files[".hidden"] = files["east"]                                                               // not a cluster
	dir.Set(t, files)
	m := startMesh(t, dir)

	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	m.waitEntries(t, "west", want("west", 3, "10.3.1.0/24 via 192.168.2.1"))
	var names []string
	for _, r := range m.Status().Remotes {
		names = append(names, r.Cluster)
	}
	require.Equal(t, []string{"east", "north", "south", "west"}, names, "east.crt, .hidden and local are not clusters")
	require.Contains(t, m.remote(t, "north").Reason, "config error: parse etcd config")
	require.Contains(t, m.remote(t, "south").Reason, "read certificate")
	require.Contains(t, m.remote(t, "south").Reason, "missing.crt")

	// Fixing the file connects it.
	north := cmt.StartRemote(t, "north", 4, "10.4.0.0/16")
	north.PutNode(t, "n1", "192.168.3.1", "10.4.1.0/24")
	dir.Add(t, north)
	m.waitEntries(t, "north", want("north", 4, "10.4.1.0/24 via 192.168.3.1"))
	m.waitReady(t, "north")
}

func nodeName(i int) string         { return "e" + strconv.Itoa(i) }
func nodeIP(third, i int) string    { return fmt.Sprintf("192.168.%d.%d", third, i) }
func nodeCIDR(second, i int) string { return fmt.Sprintf("10.%d.%d.0/24", second, i) }
