package datapath

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the reconciler's Prometheus collectors. They are created per
// Reconciler and handed to the caller by Collectors; nothing registers
// itself.
type metrics struct {
	reconcileErrors prometheus.Counter
	outOfSync       prometheus.Counter
	programmed      *prometheus.GaugeVec
	failed          *prometheus.GaugeVec
	convergence     prometheus.Histogram
	traffic         *trafficCollector
}

func newMetrics() *metrics {
	return &metrics{
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "datapath", Name: "reconcile_errors_total",
			Help: "Reconcile passes that did not fully realise the desired set.",
		}),
		outOfSync: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "datapath", Name: "out_of_sync_total",
			Help: "Kernel objects a periodic full pass found missing, different or unwanted, and repaired.",
		}),
		programmed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "podmesh", Subsystem: "datapath", Name: "prefixes_programmed",
			Help: "Remote prefixes realised in the kernel, per remote cluster.",
		}, []string{"cluster"}),
		failed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "podmesh", Subsystem: "datapath", Name: "prefixes_failed",
			Help: "Desired remote prefixes that could not be realised, per remote cluster.",
		}, []string{"cluster"}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "podmesh", Subsystem: "datapath", Name: "convergence_seconds",
			Help:    "Time from a change of the desired set to the kernel realising it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		traffic: &trafficCollector{
			packets: prometheus.NewDesc("podmesh_datapath_tx_packets_total",
				"Packets sent to a remote cluster (ebpf mode).", []string{"cluster", "cluster_id"}, nil),
			bytes: prometheus.NewDesc("podmesh_datapath_tx_bytes_total",
				"Bytes sent to a remote cluster (ebpf mode).", []string{"cluster", "cluster_id"}, nil),
			drops: prometheus.NewDesc("podmesh_datapath_drops_total",
				"Packets the datapath program dropped, by reason (ebpf mode).", []string{"reason"}, nil),
		},
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.reconcileErrors, m.outOfSync, m.programmed, m.failed, m.convergence, m.traffic}
}

func (m *metrics) setProgrammed(programmed, failed map[string]int) {
	m.programmed.Reset()
	for c, n := range programmed {
		m.programmed.WithLabelValues(c).Set(float64(n))
	}
	m.failed.Reset()
	for c, n := range failed {
		m.failed.WithLabelValues(c).Set(float64(n))
	}
}

func (m *metrics) setTraffic(t map[uint32]Counter, names map[uint32]string, drops map[string]Counter) {
	if t == nil && drops == nil {
		return
	}
	m.traffic.set(t, names, drops)
}

// trafficCollector exports the last counters read from the datapath as
// constant counter metrics (the kernel owns the values).
type trafficCollector struct {
	packets, bytes, drops *prometheus.Desc

	// mu protects last, names and drops.
	mu        sync.Mutex
	last      map[uint32]Counter
	names     map[uint32]string
	lastDrops map[string]Counter
}

func (c *trafficCollector) set(t map[uint32]Counter, names map[uint32]string, drops map[string]Counter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = t
	c.lastDrops = drops
	c.names = make(map[uint32]string, len(names))
	for id, n := range names {
		c.names[id] = n
	}
}

func (c *trafficCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.drops
}

func (c *trafficCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, v := range c.last {
		labels := []string{c.names[id], strconv.FormatUint(uint64(id), 10)}
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(v.Packets), labels...)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(v.Bytes), labels...)
	}
	for reason, v := range c.lastDrops {
		ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(v.Packets), reason)
	}
}
