package kvstoretest

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
)

func (f ClientFiles) tls(tb testing.TB, s *Etcd) *tls.Config {
	tb.Helper()
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		tb.Fatalf("load client key pair: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.CA.Cert)
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}
}
