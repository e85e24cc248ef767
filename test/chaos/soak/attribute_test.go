package soak

import (
	"testing"
	"time"

	"github.com/podmesh/podmesh/test/lab"
)

// A bad lookup is explained by exactly two things: a cutting fault of its
// own path (a flapped link of its node or CoreDNS's, a deleted Secret of
// its own cluster) and a gap in its own cluster's importer volume; another
// cluster's Secret or importer gap explains nothing.
func TestLookupsAreExplainedOnlyByTheirOwnClustersCuts(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ep := func(cluster, node string) Endpoint {
		return Endpoint{PodRef: lab.PodRef{Cluster: cluster, Name: "q"}, Node: node}
	}
	q, dns := ep("c2", "c2-n1"), ep("c2", "c2-n2")
	r := &Report{
		Faults: []Fault{
			{Kind: FaultSecret, Target: "c1", cutsCluster: "c1", Start: at(0), End: at(5)},
			{Kind: FaultSecret, Target: "c2", cutsCluster: "c2", Start: at(100), End: at(104)},
			{Kind: FaultLinkFlap, Target: "c2-n2", cutsNode: "c2-n2", Start: at(200), End: at(202)},
		},
		ConfigGaps: []configGap{
			// c2's importer emptied 10 s after its Secret fault healed.
			{Holder: importerHolder("c2"), Remote: "c1", From: at(115), To: at(115.5)},
			{Holder: importerHolder("c1"), Remote: "c2", From: at(300), To: at(301)},
		},
	}
	bad := []BadLookup{
		{From: q, DNS: dns, At: at(2)},     // c1's Secret: not c2's imports
		{From: q, DNS: dns, At: at(101)},   // c2's Secret
		{From: q, DNS: dns, At: at(115.6)}, // the late gap of c2's importer
		{From: q, DNS: dns, At: at(120)},   // after the gap's margin
		{From: q, DNS: dns, At: at(201)},   // CoreDNS's node's link
		{From: q, DNS: dns, At: at(300.5)}, // c1's importer's gap
	}
	r.attribute(bad)
	var unexplained []time.Duration
	for _, b := range r.BadLookups {
		unexplained = append(unexplained, b.At.Sub(t0))
	}
	want := []time.Duration{2 * time.Second, 120 * time.Second, 300500 * time.Millisecond}
	if len(unexplained) != len(want) || r.BadLookupsCut != 3 || r.LateExplained != 1 {
		t.Fatalf("unexplained %v (want %v), explained %d (want 3), by a late gap %d (want 1)", unexplained, want, r.BadLookupsCut, r.LateExplained)
	}
	for k := range want {
		if unexplained[k] != want[k] {
			t.Errorf("unexplained %v, want %v", unexplained, want)
		}
	}
	if len(r.LateGaps) != 2 {
		t.Errorf("late gaps %v, want both (neither began during its cluster's Secret fault)", r.LateGaps)
	}
}
