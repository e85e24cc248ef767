package clustermesh

import (
	"maps"
	"sort"
	"time"
)

// Status is the state of the mesh as the agent reports it.
type Status struct {
	LocalCluster   string `json:"localCluster"`
	LocalClusterID uint32 `json:"localClusterID"`
	ConfigDir      string `json:"configDir"`
	// ConfigDirError is set while the directory cannot be read.
	ConfigDirError string `json:"configDirError,omitempty"`
	// Synced is true once pruning is allowed; SyncReason says why.
	Synced     bool           `json:"synced"`
	SyncReason string         `json:"syncReason,omitempty"`
	Remotes    []RemoteStatus `json:"remotes"`
}

// RemoteStatus is one remote cluster's state.
type RemoteStatus struct {
	Cluster   string `json:"cluster"`
	ClusterID uint32 `json:"clusterID,omitempty"`
	Ready     bool   `json:"ready"`
	// Reason says why the cluster is not ready.
	Reason string `json:"reason,omitempty"`
	// Since is when Ready last changed.
	Since         time.Time `json:"since"`
	Synced        bool      `json:"synced"`
	LastHeartbeat time.Time `json:"lastHeartbeat,omitzero"`
	Nodes         int       `json:"nodes"`
	Endpoints     int       `json:"endpoints"`
	// Prefixes is the number of entries in the desired set.
	Prefixes int `json:"prefixes"`
	// Programmed is the number the datapath reports as programmed; nil when
	// the datapath does not report it.
	Programmed           *int `json:"programmed,omitempty"`
	EndpointsWithoutNode int  `json:"endpointsWithoutNode,omitempty"`
	DuplicatePrefixes    int  `json:"duplicatePrefixes,omitempty"`
	InvalidEntries       int  `json:"invalidEntries"`
	// InvalidByReason counts the entries currently refused.
	InvalidByReason map[string]int `json:"invalidByReason,omitempty"`
	// InvalidTotal counts every refusal since the cluster was configured.
	InvalidTotal  map[string]uint64 `json:"invalidTotal,omitempty"`
	LastInvalid   string            `json:"lastInvalid,omitempty"`
	LastError     string            `json:"lastError,omitempty"`
	LastErrorTime time.Time         `json:"lastErrorTime,omitzero"`
	Failures      uint64            `json:"failures"`
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
	remotes := make([]*remote, 0, len(m.remotes))
	for _, r := range m.remotes {
		remotes = append(remotes, r)
	}
	m.mu.Unlock()
	for _, r := range remotes {
		rs := r.status(now)
		if programmed != nil {
			n := programmed[r.name]
			rs.Programmed = &n
		}
		st.Remotes = append(st.Remotes, rs)
	}
	sort.Slice(st.Remotes, func(i, j int) bool { return st.Remotes[i].Cluster < st.Remotes[j].Cluster })
	return st
}

func (r *remote) status(now time.Time) RemoteStatus {
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
