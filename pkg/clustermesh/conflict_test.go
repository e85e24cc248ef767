package clustermesh_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

type side struct {
	name, cidr, nodeC, nodeI string
	id                       uint32
	established              time.Time // zero: the remote does not publish it
}

func (s side) start(t *testing.T) *cmt.Remote {
	t.Helper()
	r := cmt.StartRemote(t, s.name, s.id, s.cidr)
	if !s.established.IsZero() {
		r.Config.Established = s.established
		r.PutJSON(t, meshapi.ClusterConfigKey(s.name), r.Config)
	}
	r.PutNode(t, "n1", s.nodeI, s.nodeC)
	return r
}

func (s side) entries() map[netipPrefix]datapathEntry {
	return want(s.name, s.id, s.nodeC+" via "+s.nodeI)
}

// TestMeshConflictVerdictIsTheSameEverywhere starts the same conflicting
// pair on several meshes (the nodes of one cluster) in every order, both at
// once, and restarts every mesh in between: each time, on every mesh, the
// winner holds its entries, the loser is refused with a status and a metric
// naming both sides and the rule, and the loser never displaces the winner.
func TestMeshConflictVerdictIsTheSameEverywhere(t *testing.T) {
	est := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name          string
		winner, loser side
		kind, rule    string
	}{
		{
			name:   "duplicate cluster ID, the established cluster keeps it against a newcomer",
			winner: side{name: "west", id: 2, cidr: "10.3.0.0/16", nodeC: "10.3.1.0/24", nodeI: "192.168.2.1", established: est},
			loser:  side{name: "east", id: 2, cidr: "10.2.0.0/16", nodeC: "10.2.1.0/24", nodeI: "192.168.1.1", established: est.Add(time.Hour)},
			kind:   clustermesh.ConflictClusterID, rule: clustermesh.RuleEstablishedEarlier,
		},
		{
			name:   "overlapping pod CIDRs, the established cluster wins over a lower ID that does not say",
			winner: side{name: "west", id: 9, cidr: "10.2.0.0/16", nodeC: "10.2.1.0/24", nodeI: "192.168.2.1", established: est},
			loser:  side{name: "east", id: 3, cidr: "10.2.128.0/17", nodeC: "10.2.129.0/24", nodeI: "192.168.1.1"},
			kind:   clustermesh.ConflictPodCIDR, rule: clustermesh.RuleEstablishedEarlier,
		},
		{
			name:   "overlapping pod CIDRs without established times, the lower ID wins",
			winner: side{name: "west", id: 3, cidr: "10.2.0.0/16", nodeC: "10.2.1.0/24", nodeI: "192.168.2.1"},
			loser:  side{name: "east", id: 4, cidr: "10.2.128.0/17", nodeC: "10.2.129.0/24", nodeI: "192.168.1.1"},
			kind:   clustermesh.ConflictPodCIDR, rule: clustermesh.RuleLowerClusterID,
		},
	}
	orders := []string{"winner first", "loser first", "both at once"}
	const nodes = 3
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, l := tc.winner.start(t), tc.loser.start(t)
			for node := range nodes {
				order := orders[node%len(orders)]
				t.Run(fmt.Sprintf("node %d, %s", node, order), func(t *testing.T) {
					dir := cmt.NewConfigDir(t)
					m := startMesh(t, dir)
					switch order {
					case "winner first":
						dir.Add(t, w)
						m.waitEntries(t, tc.winner.name, tc.winner.entries())
						dir.Add(t, l)
					case "loser first":
						dir.Add(t, l)
						m.waitEntries(t, tc.loser.name, tc.loser.entries()) // alone, it is admitted
						dir.Add(t, w)
					case "both at once":
						files := cmt.RemoteFiles(t, w, nil, "remote-local")
						for k, v := range cmt.RemoteFiles(t, l, nil, "remote-local") {
							files[k] = v
						}
						dir.Set(t, files)
					}
					checkVerdict(t, m, tc.winner, tc.loser, tc.kind, tc.rule)

					for restart := range 2 {
						m.stop()
						m = startMesh(t, dir)
						checkVerdict(t, m, tc.winner, tc.loser, tc.kind, tc.rule)
						for _, c := range m.rec.Changes() {
							if c.Cluster == tc.loser.name {
								require.Empty(t, c.Entries, "restart %d: the loser's entries never reach the desired set once the winner is known", restart)
							}
						}
					}
				})
			}
		})
	}
}

func checkVerdict(t *testing.T, m *testMesh, winner, loser side, kind, rule string) {
	t.Helper()
	m.waitEntries(t, winner.name, winner.entries())
	m.waitReady(t, winner.name)
	st := waitRefused(t, m, loser.name, "conflict: ", loser.name, winner.name, winner.name+" wins: "+rule)
	require.NotNil(t, st.Conflict)
	require.Equal(t, kind, st.Conflict.Kind)
	require.Equal(t, winner.name, st.Conflict.Winner)
	require.Equal(t, winner.id, st.Conflict.WinnerID)
	require.Equal(t, loser.name, st.Conflict.Loser)
	require.Equal(t, loser.id, st.Conflict.LoserID)
	require.Equal(t, rule, st.Conflict.Rule)
	require.Nil(t, m.remote(t, winner.name).Conflict)
	m.waitEntries(t, loser.name, nil)

	var series []string
	for _, sm := range m.gather(t, "podmesh_agent_remote_cluster_conflict") {
		l := sm.labels
		series = append(series, fmt.Sprintf("%s %s %s %s %v", l["cluster"], l["kind"], l["winner"], l["rule"], sm.value))
	}
	require.Equal(t, []string{fmt.Sprintf("%s %s %s %s 1", loser.name, kind, winner.name, rule)}, series)
}

// TestMeshDisplacedClusterIsAdmittedWhenTheWinnerLeaves: removing the
// winner's file admits the refused cluster without a restart.
func TestMeshDisplacedClusterIsAdmittedWhenTheWinnerLeaves(t *testing.T) {
	winner := side{name: "west", id: 2, cidr: "10.3.0.0/16", nodeC: "10.3.1.0/24", nodeI: "192.168.2.1"}
	loser := side{name: "east", id: 3, cidr: "10.3.0.0/17", nodeC: "10.3.2.0/24", nodeI: "192.168.1.1"}
	w, l := winner.start(t), loser.start(t)
	dir := cmt.NewConfigDir(t)
	dir.Add(t, l)
	m := startMesh(t, dir)
	m.waitEntries(t, loser.name, loser.entries())
	dir.Add(t, w)
	checkVerdict(t, m, winner, loser, clustermesh.ConflictPodCIDR, clustermesh.RuleLowerClusterID)

	dir.Remove(t, winner.name)
	m.waitEntries(t, loser.name, loser.entries())
	m.waitReady(t, loser.name)
	m.waitEntries(t, winner.name, nil)
	require.Nil(t, m.remote(t, loser.name).Conflict)
}
