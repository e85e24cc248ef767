package clustermesh

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports Status as Prometheus metrics at scrape time, so no
// metric can drift from what `podmesh-agent status` shows.
type collector struct {
	status func() Status

	configured, ready, remoteReady, failures, lastFailure *prometheus.Desc
	nodes, endpoints, prefixes, invalidNow, invalidTotal  *prometheus.Desc
	synced, conflict, since                               *prometheus.Desc
}

// Collector returns the mesh's metrics; the caller registers it.
func (m *Mesh) Collector() prometheus.Collector { return newCollector(m.Status) }

func newCollector(status func() Status) prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("podmesh_agent_"+name, help, labels, nil)
	}
	return &collector{
		status:       status,
		configured:   d("remote_clusters", "Remote clusters configured in the config directory."),
		ready:        d("remote_clusters_ready", "Remote clusters that are connected, synced and have a fresh heartbeat."),
		remoteReady:  d("remote_cluster_ready", "1 when the remote cluster is ready.", "cluster"),
		failures:     d("remote_cluster_failures_total", "Session failures of a remote cluster (unreachable, refused, config errors).", "cluster"),
		lastFailure:  d("remote_cluster_last_failure_timestamp_seconds", "Unix time of the last failure of a remote cluster.", "cluster"),
		nodes:        d("remote_cluster_nodes", "Valid nodes of a remote cluster.", "cluster"),
		endpoints:    d("remote_cluster_endpoints", "Valid endpoints of a remote cluster.", "cluster"),
		prefixes:     d("remote_cluster_prefixes", "Prefixes of a remote cluster in the desired set.", "cluster"),
		invalidNow:   d("remote_cluster_invalid_entries", "Entries of a remote cluster currently refused, by reason.", "cluster", "reason"),
		invalidTotal: d("remote_cluster_invalid_entries_total", "Refusals of remote entries, by reason.", "cluster", "reason"),
		since:        d("remote_cluster_ready_since_timestamp_seconds", "Unix time a remote cluster's readiness last changed: while it is not ready, since when its entries are the last known state.", "cluster"),
		synced:       d("initial_sync_complete", "1 once every remote synced or the sync timeout passed (pruning allowed)."),
		conflict:     d("remote_cluster_conflict", "1 while a remote cluster is refused for a conflict: what clashes, the cluster that keeps its claim and the rule that ranked it first.", "cluster", "kind", "winner", "rule"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.configured, c.ready, c.remoteReady, c.failures, c.lastFailure, c.nodes, c.endpoints, c.prefixes, c.invalidNow, c.invalidTotal, c.synced, c.conflict, c.since} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	ready := 0
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, r := range st.Remotes {
		if r.Ready {
			ready++
		}
		gauge(c.remoteReady, b2f(r.Ready), r.Cluster)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(r.Failures), r.Cluster)
		if !r.LastErrorTime.IsZero() {
			gauge(c.lastFailure, float64(r.LastErrorTime.UnixNano())/1e9, r.Cluster)
		}
		if !r.Since.IsZero() {
			gauge(c.since, float64(r.Since.UnixNano())/1e9, r.Cluster)
		}
		gauge(c.nodes, float64(r.Nodes), r.Cluster)
		gauge(c.endpoints, float64(r.Endpoints), r.Cluster)
		gauge(c.prefixes, float64(r.Prefixes), r.Cluster)
		for reason, n := range r.InvalidByReason {
			gauge(c.invalidNow, float64(n), r.Cluster, reason)
		}
		if v := r.Conflict; v != nil {
			gauge(c.conflict, 1, r.Cluster, v.Kind, v.Winner, v.Rule)
		}
		for reason, n := range r.InvalidTotal {
			ch <- prometheus.MustNewConstMetric(c.invalidTotal, prometheus.CounterValue, float64(n), r.Cluster, reason)
		}
	}
	gauge(c.configured, float64(len(st.Remotes)))
	gauge(c.ready, float64(ready))
	gauge(c.synced, b2f(st.Synced))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
