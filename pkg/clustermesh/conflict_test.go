package clustermesh_test

import (
	"strings"
	"testing"

	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
)

// TestMeshConflictFirstAdmittedKeeps runs the conflict rule in both
// directions, for a duplicate cluster ID and for overlapping pod CIDRs: the
// cluster admitted first keeps its claim, the later one is refused with a
// reason naming both, and is admitted without a restart once the first's
// file is removed.
func TestMeshConflictFirstAdmittedKeeps(t *testing.T) {
	type side struct {
		name  string
		id    uint32
		cidr  string
		nodeC string
		nodeI string
	}
	a := side{name: "east", id: 2, cidr: "10.2.0.0/16", nodeC: "10.2.1.0/24", nodeI: "192.168.1.1"}
	cases := []struct {
		name   string
		b      side
		reason string // %s: first, then second
	}{
		{"duplicate cluster ID", side{name: "west", id: 2, cidr: "10.3.0.0/16", nodeC: "10.3.1.0/24", nodeI: "192.168.2.1"}, "cluster ID 2 of {second} is already used by {first} (admitted first)"},
		{"overlapping pod CIDRs", side{name: "west", id: 3, cidr: "10.2.128.0/17", nodeC: "10.2.129.0/24", nodeI: "192.168.2.1"}, "of {second} overlaps"},
	}
	for _, tc := range cases {
		for _, order := range []string{"east first", "west first"} {
			t.Run(tc.name+", "+order, func(t *testing.T) {
				first, second := a, tc.b
				if order == "west first" {
					first, second = tc.b, a
				}
				rf := cmt.StartRemote(t, first.name, first.id, first.cidr)
				rf.PutNode(t, "n1", first.nodeI, first.nodeC)
				rs := cmt.StartRemote(t, second.name, second.id, second.cidr)
				rs.PutNode(t, "n1", second.nodeI, second.nodeC)

				dir := cmt.NewConfigDir(t)
				dir.Add(t, rf)
				m := startMesh(t, dir)
				m.waitEntries(t, first.name, want(first.name, first.id, first.nodeC+" via "+first.nodeI))
				m.waitReady(t, first.name)

				dir.Add(t, rs)
				reason := replaceAll(tc.reason, "{first}", first.name, "{second}", second.name)
				st := waitRefused(t, m, second.name, reason, first.name, second.name)
				t.Logf("refusal: %s", st.Reason)
				m.waitEntries(t, first.name, want(first.name, first.id, first.nodeC+" via "+first.nodeI))
				if !m.remote(t, first.name).Ready {
					t.Fatalf("%s lost readiness to a later conflicting cluster", first.name)
				}

				dir.Remove(t, first.name)
				m.waitEntries(t, second.name, want(second.name, second.id, second.nodeC+" via "+second.nodeI))
				m.waitReady(t, second.name)
				m.waitEntries(t, first.name, nil)
			})
		}
	}
}

func replaceAll(s string, oldnew ...string) string {
	return strings.NewReplacer(oldnew...).Replace(s)
}
