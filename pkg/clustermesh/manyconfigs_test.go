package clustermesh_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// TestMeshReadsItsOwnConfigAmongManyClusters: a remote etcd that holds the
// cluster configs of many clusters (as a cache tier does) is accepted when
// its own config is there, however many others sort before it; a file whose
// cluster has no config there is refused with a bounded list of the others.
func TestMeshReadsItsOwnConfigAmongManyClusters(t *testing.T) {
	const others = 100 // more than any single listing page the agent might use
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	for i := range others {
		name := fmt.Sprintf("c%03d", i) // sorts before "east"
		cfg := meshapi.ClusterConfig{Name: name, ID: uint32(10 + i), PodCIDRs: []netipPrefix{mustPrefix(fmt.Sprintf("10.%d.0.0/16", 100+i))}, FormatVersion: meshapi.FormatVersion}
		east.PutJSON(t, meshapi.ClusterConfigKey(name), cfg)
	}
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir)
	m.waitEntries(t, "east", want("east", 2, "10.2.1.0/24 via 192.168.1.1"))
	m.waitReady(t, "east")

	files := dir.Files()
	files["south"] = files["east"] // same etcd, which has no config for south
	dir.Set(t, files)
	st := waitRefused(t, m, "south", "remote publishes cluster config for c000, c001", fmt.Sprintf("and %d more, not south", others+1-8))
	require.NotContains(t, st.Reason, "c050", "the refusal names a bounded number of clusters")
	require.True(t, m.remote(t, "east").Ready, "east is unaffected")
}
