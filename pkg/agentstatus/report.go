package agentstatus

import "time"

// Report is what /status returns.
type Report struct {
	Node     string    `json:"node"`
	TunnelIP string    `json:"tunnelIP"`
	Mesh     Mesh      `json:"mesh"`
	Datapath *Datapath `json:"datapath,omitempty"`
}

// Mesh is the state of the remote clusters.
type Mesh struct {
	LocalCluster   string `json:"localCluster"`
	LocalClusterID uint32 `json:"localClusterID"`
	ConfigDir      string `json:"configDir"`
	// ConfigDirError is set while the directory cannot be read.
	ConfigDirError string `json:"configDirError,omitempty"`
	// Synced is true once pruning is allowed; SyncReason says why.
	Synced     bool     `json:"synced"`
	SyncReason string   `json:"syncReason,omitempty"`
	Remotes    []Remote `json:"remotes"`
	// Cache is the agent's session to its cluster's cache (cache mode
	// only): which replica it reads and how often it listed.
	Cache *Cache `json:"cache,omitempty"`
}

// Cache is an agent's session to its own cluster's cache tier. Replicas
// sit behind one Service address, so the replica is told apart by its
// epoch, which is random per replica (per etcd data directory).
type Cache struct {
	// Endpoint is the endpoint of the cache's client file the agent dials
	// (it picks one at random when the file names several).
	Endpoint string `json:"endpoint"`
	// Address is where the connection went: the address dialled (a
	// Service's ClusterIP when Endpoint names a Service) and, after "->",
	// the connection's peer when it differs.
	Address string `json:"address,omitempty"`
	// Epoch identifies the replica whose data the agent holds: the epoch of
	// its last listing ("" before the first).
	Epoch     string `json:"epoch,omitempty"`
	Connected bool   `json:"connected"`
	// SessionStart is when the current or last session began; its full
	// listing of the cache starts then.
	SessionStart time.Time `json:"sessionStart,omitzero"`
	// Listings counts the complete listings of the cache since the agent
	// started: the first one, then one per re-list (another replica, a
	// session ended by a lost connection, a compacted revision).
	Listings   uint64    `json:"listings"`
	LastListed time.Time `json:"lastListed,omitzero"`
	// RetryAt is when the next session starts while the agent waits to
	// reconnect (after losing its replica, a random point of the
	// reconnect window).
	RetryAt time.Time `json:"retryAt,omitzero"`
}

// Remote is one remote cluster's state.
type Remote struct {
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
	InvalidTotal map[string]uint64 `json:"invalidTotal,omitempty"`
	LastInvalid  string            `json:"lastInvalid,omitempty"`
	// Conflict is set while the cluster is refused because it conflicts
	// with the local cluster or another remote.
	Conflict      *Conflict `json:"conflict,omitempty"`
	LastError     string    `json:"lastError,omitempty"`
	LastErrorTime time.Time `json:"lastErrorTime,omitzero"`
	Failures      uint64    `json:"failures"`
}

// Conflict names both sides of a refusal and the rule that decided it.
type Conflict struct {
	// Kind is what clashes: "cluster-id", "pod-cidr" or "name".
	Kind string `json:"kind"`
	// Winner is the cluster that keeps its claim (the local cluster's name
	// when the clash is with the local cluster).
	Winner   string `json:"winner"`
	WinnerID uint32 `json:"winnerID"`
	// Loser is the refused cluster (the one whose status this is).
	Loser   string `json:"loser"`
	LoserID uint32 `json:"loserID"`
	// Rule is the rule that ranked Winner first: "local-cluster",
	// "established-earlier", "lower-cluster-id" or "lower-name".
	Rule string `json:"rule"`
	// Detail is the human-readable sentence status prints.
	Detail string `json:"detail"`
}

// Datapath is the part of the datapath's status the report shows.
type Datapath struct {
	Mode            string         `json:"mode"`
	Programmed      map[string]int `json:"programmed"`
	Failed          map[string]int `json:"failed,omitempty"`
	LastError       string         `json:"lastError,omitempty"`
	ReconcileErrors uint64         `json:"reconcileErrors"`
	LastReconcile   time.Time      `json:"lastReconcile,omitzero"`
}
