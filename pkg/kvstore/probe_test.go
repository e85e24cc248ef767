package kvstore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/pkg/kvstore"
)

// tlsServer accepts TLS connections that present a certificate of ca with
// CN allowed, writes one byte (as a gRPC server's settings would) and closes.
func tlsServer(t *testing.T, ca *certs.CA, allowed string) string {
	t.Helper()
	srv, err := ca.IssueServer(certs.Options{CommonName: "srv", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(srv.CertPEM, srv.KeyPEM)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, NextProtos: []string{"h2"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.VerifiedChains[0][0].Subject.CommonName != allowed {
				return errors.New("peer not allowed")
			}
			return nil
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err == nil {
					c.Write([]byte{0})
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestProbeTLSNamesCertificateProblems(t *testing.T) {
	ca, err := certs.NewCA(certs.Options{CommonName: "ca"})
	require.NoError(t, err)
	other, err := certs.NewCA(certs.Options{CommonName: "other-ca"})
	require.NoError(t, err)
	addr := tlsServer(t, ca, "remote-local")
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name    string
		caPEM   []byte
		signer  *certs.CA
		cn      string
		addr    string
		wantErr string
	}{
		{name: "accepted", caPEM: ca.CertPEM, signer: ca, cn: "remote-local", addr: addr},
		{name: "server certificate from an unknown CA", caPEM: other.CertPEM, signer: ca, cn: "remote-local", addr: addr, wantErr: "tls handshake: tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		{name: "client certificate from an unknown CA", caPEM: ca.CertPEM, signer: other, cn: "remote-local", addr: addr, wantErr: "tls: remote error: tls: "},
		{name: "CN not allowed", caPEM: ca.CertPEM, signer: ca, cn: "remote-intruder", addr: addr, wantErr: "tls: remote error: tls: "},
		{name: "nothing listening is not a TLS problem", caPEM: ca.CertPEM, signer: ca, cn: "remote-local", addr: closedAddr, wantErr: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			kp, err := tt.signer.IssueClient(certs.Options{CommonName: tt.cn})
			require.NoError(t, err)
			require.NoError(t, kp.WriteFiles(filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key"), true))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), tt.caPEM, 0o644))
			path := filepath.Join(dir, "east")
			require.NoError(t, os.WriteFile(path, []byte("endpoints: [https://"+tt.addr+"]\ntrusted-ca-file: ca.crt\ncert-file: c.crt\nkey-file: c.key\n"), 0o600))
			cfg, err := kvstore.LoadConfig(path, nil)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = kvstore.ProbeTLS(ctx, cfg)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			require.NotContains(t, err.Error(), "tls handshake: dial", "a dial failure is not reported as a TLS failure")
		})
	}
}
