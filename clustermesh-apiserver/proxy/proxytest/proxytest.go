package proxytest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/etcdserver"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
)

// PKI is a test CA with a serving certificate for 127.0.0.1 and localhost.
type PKI struct {
	CA     *certs.CA
	Server *certs.KeyPair
}

// NewPKI creates a CA and a serving certificate.
func NewPKI(tb testing.TB) *PKI {
	tb.Helper()
	ca, err := certs.NewCA(certs.Options{CommonName: "podmesh-test-ca"})
	if err != nil {
		tb.Fatalf("create CA: %v", err)
	}
	srv, err := ca.IssueServer(certs.Options{
		CommonName:  "clustermesh-apiserver",
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	})
	if err != nil {
		tb.Fatalf("issue serving certificate: %v", err)
	}
	return &PKI{CA: ca, Server: srv}
}

// Pool returns a pool holding the CA.
func (p *PKI) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	return pool
}

// ServerTLS returns the proxy's TLS configuration for allowedPeers.
func (p *PKI) ServerTLS(tb testing.TB, allowedPeers ...string) *tls.Config {
	tb.Helper()
	cfg, err := proxy.ServerTLS(tlsCert(tb, p.Server), p.Pool(), allowedPeers)
	if err != nil {
		tb.Fatalf("proxy TLS: %v", err)
	}
	return cfg
}

// IssueClient issues a client certificate with the given CN.
func (p *PKI) IssueClient(tb testing.TB, cn string) *certs.KeyPair {
	tb.Helper()
	kp, err := p.CA.IssueClient(certs.Options{CommonName: cn})
	if err != nil {
		tb.Fatalf("issue client certificate %q: %v", cn, err)
	}
	return kp
}

// ClientTLS returns a client TLS configuration that trusts the CA and
// presents kp (no certificate when kp is nil).
func (p *PKI) ClientTLS(tb testing.TB, kp *certs.KeyPair) *tls.Config {
	tb.Helper()
	cfg := &tls.Config{RootCAs: p.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if kp != nil {
		cfg.Certificates = []tls.Certificate{tlsCert(tb, kp)}
	}
	return cfg
}

// WriteClientFiles writes ca.crt, <cn>.crt and <cn>.key into a temporary
// directory for a client with the given CN, and returns their paths.
func (p *PKI) WriteClientFiles(tb testing.TB, cn string) (caFile, certFile, keyFile string) {
	tb.Helper()
	dir := tb.TempDir()
	caFile = filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, p.CA.CertPEM, 0o644); err != nil {
		tb.Fatalf("write CA: %v", err)
	}
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := p.IssueClient(tb, cn).WriteFiles(certFile, keyFile, true); err != nil {
		tb.Fatalf("write client certificate: %v", err)
	}
	return caFile, certFile, keyFile
}

func tlsCert(tb testing.TB, kp *certs.KeyPair) tls.Certificate {
	tb.Helper()
	c, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		tb.Fatalf("load key pair: %v", err)
	}
	return c
}

// Env is an embedded etcd with a read-only proxy in front.
type Env struct {
	Etcd    *etcdserver.Server
	Proxy   *proxy.Proxy
	PKI     *PKI
	Metrics *proxy.Metrics
	// Endpoint is the proxy's URL, https://127.0.0.1:<port>.
	Endpoint string
}

// Start runs an embedded etcd (fsync off) and a proxy that admits the given
// CNs. Both stop at tb.Cleanup.
func Start(tb testing.TB, allowedPeers ...string) *Env {
	tb.Helper()
	log := quietLog()
	ctx := tb.Context()
	e := StartEtcd(tb)
	pki := NewPKI(tb)
	m := proxy.NewMetrics()
	p, err := proxy.Start(ctx, proxy.Config{Listen: "127.0.0.1:0", TLS: pki.ServerTLS(tb, allowedPeers...), Client: e.Reader, Metrics: m, Log: log})
	if err != nil {
		tb.Fatalf("start proxy: %v", err)
	}
	tb.Cleanup(p.Stop)
	return &Env{Etcd: e, Proxy: p, PKI: pki, Metrics: m, Endpoint: "https://" + p.Addr()}
}

// StartEtcd runs clustermesh-apiserver's embedded etcd (auth on, fsync off)
// until tb ends.
func StartEtcd(tb testing.TB) *etcdserver.Server {
	tb.Helper()
	e, err := etcdserver.Start(tb.Context(), etcdserver.Config{DataDir: tb.TempDir(), UnsafeNoFsync: true, Log: quietLog(), EtcdLog: zap.NewNop()})
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(func() { e.Close() })
	return e
}

func quietLog() *logrus.Logger {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return log
}

// Client returns an etcd client that reaches the proxy with a fresh client
// certificate for cn, closed at tb.Cleanup.
func (e *Env) Client(tb testing.TB, cn string) *clientv3.Client {
	tb.Helper()
	return e.ClientWithTLS(tb, e.PKI.ClientTLS(tb, e.PKI.IssueClient(tb, cn)))
}

// ClientWithTLS returns an etcd client for the proxy with any TLS setup.
func (e *Env) ClientWithTLS(tb testing.TB, cfg *tls.Config) *clientv3.Client {
	tb.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{e.Endpoint},
		TLS:         cfg,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		tb.Fatalf("etcd client for proxy: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}
