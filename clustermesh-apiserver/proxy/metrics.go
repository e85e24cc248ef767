package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the proxy. The caller registers Collectors() in its registry.
type Metrics struct {
	// Refused counts RPCs refused as writes or not allowed, by method.
	Refused *prometheus.CounterVec
	// HandshakeFailures counts refused TLS handshakes by reason.
	HandshakeFailures *prometheus.CounterVec
}

// NewMetrics returns unregistered proxy metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "apiserver_proxy", Name: "refused_rpcs_total",
			Help: "RPCs the read-only proxy refused with PermissionDenied, by gRPC method.",
		}, []string{"method"}),
		HandshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "podmesh", Subsystem: "apiserver_proxy", Name: "tls_handshake_failures_total",
			Help: "TLS handshakes the proxy refused, by reason.",
		}, []string{"reason"}),
	}
}

// Collectors returns every metric, for registration.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Refused, m.HandshakeFailures}
}
