package clustermesh

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/podmesh/podmesh/pkg/agentstatus"
)

// Status is the state of the mesh as the agent reports it.
type Status = agentstatus.Mesh

// RemoteStatus is one remote cluster's state.
type RemoteStatus = agentstatus.Remote

// record is one remote cluster's status. The Mesh owns it for as long as the
// cluster is configured; sessions come and go and write to it through
// update, which drops the writes of a superseded generation.
type record struct {
	name       string
	staleAfter time.Duration
	now        func() time.Time

	// mu protects everything below.
	mu  sync.Mutex
	gen uint64
	// up is true while a session is connected, admitted and listed.
	up bool
	// phase says why the cluster is not up ("connecting", "refused: ...").
	phase      string
	clusterID  uint32
	everSynced bool
	ready      bool
	since      time.Time
	heartbeat  time.Time
	// hbChanged is the local time the heartbeat value was last seen to
	// change (zero until a change after the first read).
	hbChanged time.Time
	hbErr     string
	// probeErr is set while the liveness read goes unanswered.
	probeErr    string
	nodes       int
	endpoints   int
	prefixes    int
	noNode      int
	duplicates  int
	invalidNow  map[string]int
	invalidAll  map[string]uint64
	lastInvalid string
	lastErr     string
	lastErrTime time.Time
	failures    uint64
}

func newRecord(name string, staleAfter time.Duration, now func() time.Time) *record {
	return &record{name: name, staleAfter: staleAfter, now: now, phase: "connecting", since: now(), invalidAll: make(map[string]uint64)}
}

// nextGeneration makes every later update of an older generation a no-op
// and returns the new generation.
func (r *record) nextGeneration() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	r.up = false
	r.probeErr = ""
	return r.gen
}

func (r *record) generation() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen
}

// update runs f under r.mu if gen is still current.
func (r *record) update(gen uint64, f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen != gen {
		return
	}
	f()
	r.refreshReadyLocked(r.now())
}

// invalid counts one refused entry (of any generation: the total is the
// cluster's history).
func (r *record) invalid(reason, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.invalidAll[reason]++
	r.lastInvalid = what
}

func (r *record) recordErrorLocked(err error) {
	r.lastErr = err.Error()
	r.lastErrTime = r.now()
	r.failures++
}

// refreshReadyLocked recomputes readiness and records when it flipped.
func (r *record) refreshReadyLocked(now time.Time) {
	ready := r.up && r.probeErr == "" && r.hbErr == "" && r.heartbeatFreshLocked(now)
	if ready != r.ready {
		r.ready = ready
		r.since = now
	}
}

func (r *record) reasonLocked(now time.Time) string {
	switch {
	case !r.up:
		return r.phase
	case r.probeErr != "":
		return r.probeErr
	case r.hbErr != "":
		return r.hbErr
	case r.heartbeat.IsZero():
		return "no heartbeat published"
	case !r.heartbeatFreshLocked(now):
		return fmt.Sprintf("heartbeat stale: last %s, older than %s", r.heartbeat.UTC().Format(time.RFC3339), r.staleAfter)
	}
	return ""
}

// heartbeatFreshLocked: the remote's timestamp is recent by the local clock,
// or the value has changed recently (the remote apiserver is alive even if
// the clusters' clocks disagree).
func (r *record) heartbeatFreshLocked(now time.Time) bool {
	if r.heartbeat.IsZero() {
		return false
	}
	return now.Sub(r.heartbeat) <= r.staleAfter || (!r.hbChanged.IsZero() && now.Sub(r.hbChanged) <= r.staleAfter)
}

func (r *record) status(now time.Time) RemoteStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refreshReadyLocked(now)
	rs := RemoteStatus{
		Cluster:              r.name,
		ClusterID:            r.clusterID,
		Ready:                r.ready,
		Reason:               r.reasonLocked(now),
		Since:                r.since,
		Synced:               r.everSynced,
		LastHeartbeat:        r.heartbeat,
		Nodes:                r.nodes,
		Endpoints:            r.endpoints,
		Prefixes:             r.prefixes,
		EndpointsWithoutNode: r.noNode,
		DuplicatePrefixes:    r.duplicates,
		InvalidByReason:      maps.Clone(r.invalidNow),
		InvalidTotal:         maps.Clone(r.invalidAll),
		LastInvalid:          r.lastInvalid,
		LastError:            r.lastErr,
		LastErrorTime:        r.lastErrTime,
		Failures:             r.failures,
	}
	for _, n := range r.invalidNow {
		rs.InvalidEntries += n
	}
	return rs
}

// Status returns a consistent copy of the mesh state, remotes sorted by name.
func (m *Mesh) Status() Status {
	var programmed map[string]int
	if m.opts.Programmed != nil {
		programmed = m.opts.Programmed()
	}
	now := m.now()
	m.mu.Lock()
	st := Status{
		LocalCluster:   m.opts.LocalCluster,
		LocalClusterID: m.opts.LocalClusterID,
		ConfigDir:      m.opts.ConfigDir,
		ConfigDirError: m.dirErr,
		Synced:         m.pruneAllowed,
		SyncReason:     m.pruneReason,
	}
	records := make([]*record, 0, len(m.remotes))
	for _, r := range m.remotes {
		records = append(records, r.rec)
	}
	m.mu.Unlock()
	for _, rec := range records {
		rs := rec.status(now)
		if programmed != nil {
			n := programmed[rec.name]
			rs.Programmed = &n
		}
		rs.Conflict = m.registry.Verdict(rec.name)
		st.Remotes = append(st.Remotes, rs)
	}
	slices.SortFunc(st.Remotes, func(a, b RemoteStatus) int { return strings.Compare(a.Cluster, b.Cluster) })
	return st
}
