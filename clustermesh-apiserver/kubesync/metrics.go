package kubesync

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the sync. The caller registers Collectors() in its registry.
type Metrics struct {
	// EtcdWrites counts writes that reached etcd, by op (put, delete).
	EtcdWrites *prometheus.CounterVec
	// EtcdTxns counts the transactions that carried EtcdWrites.
	EtcdTxns prometheus.Counter
	// EtcdWriteErrors counts failed writes (retried with backoff), by op.
	EtcdWriteErrors *prometheus.CounterVec
	// WritesSkipped counts queued keys whose value etcd already held.
	WritesSkipped prometheus.Counter
	// NotExported is the number of Kubernetes objects not exported now, by
	// kind and reason.
	NotExported *prometheus.GaugeVec
	// Synced is 1 once the kind's canary is written in this run.
	Synced *prometheus.GaugeVec
	// ExportStatusWrites counts ServiceExport status writes, by result
	// (ok, error).
	ExportStatusWrites *prometheus.CounterVec
	// QueueDepth is the number of keys waiting to be written.
	QueueDepth prometheus.GaugeFunc
	// depth is set by the Syncer that owns these metrics.
	depth atomic.Pointer[func() float64]
}

// NewMetrics returns unregistered sync metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		EtcdWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "apiserver", Name: "etcd_writes_total",
			Help: "Writes the Kubernetes sync made to etcd, by operation.",
		}, []string{"op"}),
		EtcdTxns: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "apiserver", Name: "etcd_txns_total",
			Help: "etcd transactions the Kubernetes sync made (each carries up to 128 writes).",
		}),
		EtcdWriteErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "apiserver", Name: "etcd_write_errors_total",
			Help: "Failed etcd writes of the Kubernetes sync (retried with backoff), by operation.",
		}, []string{"op"}),
		WritesSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "apiserver", Name: "etcd_writes_skipped_total",
			Help: "Queued keys whose desired value etcd already held, so no write was made.",
		}),
		NotExported: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "podmesh", Subsystem: "apiserver", Name: "objects_not_exported",
			Help: "Kubernetes objects that are not exported, by kind and reason.",
		}, []string{"kind", "reason"}),
		ExportStatusWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "apiserver", Name: "serviceexport_status_writes_total",
			Help: "Server-side applies of ServiceExport conditions (Valid, Ready), by result.",
		}, []string{"result"}),
		Synced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "podmesh", Subsystem: "apiserver", Name: "synced",
			Help: "1 once the sync canary of the kind has been written since start.",
		}, []string{"kind"}),
	}
	m.QueueDepth = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "podmesh", Subsystem: "apiserver", Name: "sync_queue_depth",
		Help: "etcd keys waiting to be written.",
	}, func() float64 {
		if f := m.depth.Load(); f != nil {
			return (*f)()
		}
		return 0
	})
	return m
}

// Collectors returns every metric, for registration.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.EtcdWrites, m.EtcdTxns, m.EtcdWriteErrors, m.WritesSkipped, m.NotExported, m.ExportStatusWrites, m.Synced, m.QueueDepth}
}
