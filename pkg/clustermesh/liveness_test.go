package clustermesh_test

import (
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
)

// TestMeshReportsADeadRemoteWithinSeconds kills the path to a remote with
// the agent's default timing, in the two ways it fails in practice (the
// proxy process dies and its connections are reset; the path silently drops
// everything), and measures how long the remote stays ready. It logs each
// time as MEASURED; the only bound asserted is a generous one that proves
// detection happens. Before every cut it watches a healthy remote for a
// while and requires it never to be reported not ready, so it doubles as
// the check against false alarms when run on a busy machine.
//
// PODMESH_DETECT_RUNS sets the number of cuts per kind (default 3).
func TestMeshReportsADeadRemoteWithinSeconds(t *testing.T) {
	runs := 3
	if s := os.Getenv("PODMESH_DETECT_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err, "PODMESH_DETECT_RUNS")
		runs = n
	}
	east := cmt.StartRemote(t, "east", 2, "10.2.0.0/16")
	east.PutNode(t, "e1", "192.168.1.1", "10.2.1.0/24")
	dir := cmt.NewConfigDir(t)
	dir.Add(t, east)
	m := startMesh(t, dir, func(o *clustermesh.Options) {
		o.Timing = clustermesh.DefaultTiming
		o.Timing.BackoffMin, o.Timing.BackoffMax = 50*time.Millisecond, 300*time.Millisecond
		o.Timing.HeartbeatStaleAfter = time.Hour // the heartbeat is written once; liveness is what is measured
	})
	entries := want("east", 2, "10.2.1.0/24 via 192.168.1.1")
	m.waitEntries(t, "east", entries)
	m.waitReady(t, "east")

	kinds := []struct {
		name         string
		cut, restore func()
	}{
		{"connections reset (proxy died)", east.Fwd.Cut, func() { east.Fwd.Restore(t) }},
		{"path silently dropping", east.Fwd.Stall, east.Fwd.Unstall},
	}
	for _, k := range kinds {
		var measured []time.Duration
		for run := range runs {
			m.waitReady(t, "east")
			healthyFor(t, m, "east", 3*time.Second)

			before := len(m.rec.Changes())
			start := time.Now()
			k.cut()
			var st clustermesh.RemoteStatus
			require.Eventually(t, func() bool {
				st = m.remote(t, "east")
				return !st.Ready
			}, 30*time.Second, 5*time.Millisecond, "%s: east never reported not ready", k.name)
			d := time.Since(start)
			measured = append(measured, d)
			t.Logf("MEASURED detection %s run %d: %s (reason: %s)", k.name, run, d.Round(time.Millisecond), st.Reason)
			require.Contains(t, st.Reason, "unreachable")
			require.Equal(t, entries, m.rec.Cluster("east"), "nothing withdrawn while east is unreachable")
			k.restore()
			m.waitReady(t, "east")
			for _, c := range m.rec.Changes()[before:] {
				require.Empty(t, c.Removed, "nothing withdrawn across the outage")
			}
		}
		slices.Sort(measured)
		t.Logf("MEASURED detection %s: n=%d p50=%s p99=%s max=%s", k.name, len(measured),
			percentile(measured, 50).Round(time.Millisecond), percentile(measured, 99).Round(time.Millisecond), measured[len(measured)-1].Round(time.Millisecond))
	}
}

// healthyFor watches a reachable remote for d and fails if it is ever
// reported not ready.
func healthyFor(t *testing.T, m *testMesh, name string, d time.Duration) {
	t.Helper()
	start := m.remote(t, name)
	since := start.Since
	deadline := time.Now().Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		st := m.remote(t, name)
		require.True(t, st.Ready, "false alarm: %s reported not ready while reachable: %s", name, st.Reason)
		require.Equal(t, since, st.Since, "%s flipped readiness while reachable", name)
		<-tick.C
	}
	end := m.remote(t, name)
	require.Equal(t, start.Failures, end.Failures, "a read failed while %s was reachable: %s", name, end.LastError)
}

// percentile returns the p-th percentile of sorted ds (nearest rank).
func percentile(ds []time.Duration, p int) time.Duration {
	i := (p*len(ds)+99)/100 - 1
	return ds[max(0, min(i, len(ds)-1))]
}
