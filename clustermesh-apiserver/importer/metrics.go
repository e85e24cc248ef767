package importer

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metrics of the importer. Create with NewMetrics and register Collectors.
type Metrics struct {
	importer *Importer

	leader           prometheus.Gauge
	writes           *prometheus.CounterVec
	invalid          *prometheus.CounterVec
	failures         *prometheus.CounterVec
	foreign          prometheus.Counter
	reconcileErrors  prometheus.Counter
	reconcileSeconds prometheus.Histogram
	remotes          *remoteCollector
}

// NewMetrics returns unregistered metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podmesh_importer_leader", Help: "1 while this instance holds the importer Lease and writes imports.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_importer_kube_writes_total", Help: "Write requests the importer sent to the local kube-apiserver, by kind and verb.",
		}, []string{"kind", "verb"}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_importer_invalid_entries_total", Help: "Service entries or endpoints refused, by source cluster and reason.",
		}, []string{"cluster", "reason"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podmesh_importer_remote_failures_total", Help: "Sessions to a cluster that ended in an error.",
		}, []string{"cluster"}),
		foreign: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podmesh_importer_foreign_objects_total", Help: "Reconciles that found an object podmesh does not manage in the way of an import.",
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podmesh_importer_reconcile_errors_total", Help: "Reconciles of one import that failed and were retried.",
		}),
		reconcileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "podmesh_importer_reconcile_seconds", Help: "Duration of one import's reconcile.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
	}
	m.remotes = &remoteCollector{m: m,
		age:      prometheus.NewDesc("podmesh_importer_remote_data_age_seconds", "Seconds since the cluster's service data was last confirmed current (listing, event or heartbeat read).", []string{"cluster"}, nil),
		ready:    prometheus.NewDesc("podmesh_importer_remote_connected", "1 while a session to the cluster is up.", []string{"cluster"}, nil),
		synced:   prometheus.NewDesc("podmesh_importer_remote_synced", "1 once the cluster's services were listed in this process (until then its existing slices are kept).", []string{"cluster"}, nil),
		services: prometheus.NewDesc("podmesh_importer_remote_services", "Exported services the cluster currently contributes.", []string{"cluster"}, nil),
	}
	return m
}

// Collectors returns every collector for the caller to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.leader, m.writes, m.invalid, m.failures, m.foreign, m.reconcileErrors, m.reconcileSeconds, m.remotes}
}

// Writes returns the number of write requests sent to the kube-apiserver.
func (m *Metrics) Writes() float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { m.writes.Collect(ch); close(ch) }()
	var n float64
	for met := range ch {
		var pb dto.Metric
		if err := met.Write(&pb); err == nil && pb.Counter != nil {
			n += pb.Counter.GetValue()
		}
	}
	return n
}

// LeaderGauge is 1 while this instance writes.
func (m *Metrics) LeaderGauge() prometheus.Gauge { return m.leader }

func (m *Metrics) forget(cluster string) {
	m.invalid.DeletePartialMatch(prometheus.Labels{"cluster": cluster})
	m.failures.DeleteLabelValues(cluster)
}

// remoteCollector reports per-cluster gauges computed at scrape time, so a
// cluster's data age grows while it is unreachable.
type remoteCollector struct {
	m                            *Metrics
	age, ready, synced, services *prometheus.Desc
}

func (c *remoteCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.age
	ch <- c.ready
	ch <- c.synced
	ch <- c.services
}

func (c *remoteCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m.importer == nil {
		return
	}
	for _, r := range c.m.importer.Status().Clusters {
		if r.DataAgeSeconds != nil {
			ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, *r.DataAgeSeconds, r.Cluster)
		}
		ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, b2f(r.Connected), r.Cluster)
		ch <- prometheus.MustNewConstMetric(c.synced, prometheus.GaugeValue, b2f(r.Synced), r.Cluster)
		ch <- prometheus.MustNewConstMetric(c.services, prometheus.GaugeValue, float64(r.Services), r.Cluster)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
