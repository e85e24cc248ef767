package importer

import (
	"maps"
	"sort"
	"time"

	"github.com/podmesh/podmesh/pkg/clustermesh"
)

// Status is what the importer reports at clustermesh-apiserver's
// /status/imports and in its metrics.
type Status struct {
	LocalCluster string `json:"localCluster"`
	ConfigDir    string `json:"configDir"`
	// ConfigDirError is set while the directory cannot be read.
	ConfigDirError string `json:"configDirError,omitempty"`
	// Leader is true while this instance writes (holds the Lease).
	Leader   bool            `json:"leader"`
	Clusters []ClusterStatus `json:"clusters"`
}

// ClusterStatus is one source cluster (the remotes and the local cluster).
type ClusterStatus struct {
	Cluster string `json:"cluster"`
	Local   bool   `json:"local,omitempty"`
	// Connected is true while a session is up.
	Connected bool `json:"connected"`
	// Synced is true once the cluster's services were listed in this
	// process; until then its slices from an earlier run are kept as they
	// are.
	Synced bool `json:"synced"`
	// Phase says what the session is doing or why it is down.
	Phase string `json:"phase,omitempty"`
	// Note explains a cluster that exports nothing by rule (service format
	// 1, refused config).
	Note string `json:"note,omitempty"`
	// LastContact is when the data was last confirmed current (a listing,
	// an event or a heartbeat read); DataAgeSeconds is its age now.
	LastContact    time.Time `json:"lastContact,omitzero"`
	DataAgeSeconds *float64  `json:"dataAgeSeconds,omitempty"`
	Services       int       `json:"services"`
	Endpoints      int       `json:"endpoints"`
	// InvalidTotal counts refusals (entries or endpoints) by reason.
	InvalidTotal  map[string]uint64 `json:"invalidTotal,omitempty"`
	LastInvalid   string            `json:"lastInvalid,omitempty"`
	LastError     string            `json:"lastError,omitempty"`
	LastErrorTime time.Time         `json:"lastErrorTime,omitzero"`
	Failures      uint64            `json:"failures"`
}

// Status returns a consistent copy of the importer's state, clusters sorted
// by name.
func (imp *Importer) Status() Status {
	now := imp.now()
	var cached map[string]clustermesh.RemoteStatus
	if imp.opts.Cache != nil {
		cached = make(map[string]clustermesh.RemoteStatus)
		for _, rs := range imp.opts.Cache.Status().Remotes {
			cached[rs.Cluster] = rs
		}
	}
	imp.mu.Lock()
	defer imp.mu.Unlock()
	st := Status{LocalCluster: imp.opts.LocalCluster, ConfigDir: imp.opts.ConfigDir, ConfigDirError: imp.dirErr, Leader: imp.leader, Clusters: []ClusterStatus{}}
	for _, v := range imp.clusters {
		cs := ClusterStatus{
			Cluster: v.name, Local: v.local, Connected: v.connected, Synced: v.synced, Phase: v.phase, Note: v.note,
			LastContact: v.lastContact, InvalidTotal: maps.Clone(v.invalid), LastInvalid: v.lastInvalid,
			LastError: v.lastErr, LastErrorTime: v.lastErrTime, Failures: v.failures,
		}
		if rs, ok := cached[v.name]; ok && !v.local {
			cs.fromCache(rs, now)
		}
		if !cs.LastContact.IsZero() {
			age := now.Sub(cs.LastContact).Seconds()
			cs.DataAgeSeconds = &age
		}
		for _, e := range v.entries {
			if e.export != nil {
				cs.Services++
				cs.Endpoints += len(e.export.Endpoints)
			}
		}
		if len(cs.InvalidTotal) == 0 {
			cs.InvalidTotal = nil
		}
		st.Clusters = append(st.Clusters, cs)
	}
	sort.Slice(st.Clusters, func(i, j int) bool { return st.Clusters[i].Cluster < st.Clusters[j].Cluster })
	return st
}
