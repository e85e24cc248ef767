package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/credentials"
)

// ErrPeerNotAllowed is the handshake error for a client certificate whose CN
// is not on the allow-list.
var ErrPeerNotAllowed = errors.New("client certificate CN is not an allowed peer")

// LoadServerTLS reads the serving certificate and key and the CA that client
// certificates must chain to, and returns ServerTLS of them.
func LoadServerTLS(certFile, keyFile, clientCAFile string, allowedPeers []string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load serving certificate %s and key %s: %w", certFile, keyFile, err)
	}
	caPEM, err := os.ReadFile(clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("read client CA %s: %w", clientCAFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("client CA %s: no PEM certificate found", clientCAFile)
	}
	return ServerTLS(cert, pool, allowedPeers)
}

// ServerTLS returns the proxy's TLS configuration: TLS 1.2 or later, a
// verified client certificate required, and its CN on allowedPeers.
func ServerTLS(cert tls.Certificate, clientCAs *x509.CertPool, allowedPeers []string) (*tls.Config, error) {
	if len(allowedPeers) == 0 {
		return nil, errors.New("proxy TLS: no allowed peers")
	}
	allowed := slices.Clone(allowedPeers)
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		NextProtos:   []string{"h2"},
		// Called after the chain was verified against ClientCAs.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
				return errors.New("no verified client certificate")
			}
			cn := cs.VerifiedChains[0][0].Subject.CommonName
			if !slices.Contains(allowed, cn) {
				return fmt.Errorf("%w: %q", ErrPeerNotAllowed, cn)
			}
			return nil
		},
	}, nil
}

// peerCN returns the CN of the verified client certificate of a connection.
func peerCN(ai credentials.AuthInfo) string {
	info, ok := ai.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return ""
	}
	return info.State.VerifiedChains[0][0].Subject.CommonName
}

// countingCreds counts and logs failed TLS handshakes by reason; gRPC itself
// only drops the connection.
type countingCreds struct {
	credentials.TransportCredentials
	failures *prometheus.CounterVec
	log      logrus.FieldLogger
}

func (c *countingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, ai, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		reason := handshakeFailureReason(err)
		c.failures.WithLabelValues(reason).Inc()
		c.log.WithFields(logrus.Fields{"remote": conn.RemoteAddr().String(), "reason": reason}).WithError(err).Warn("Refused TLS handshake")
	}
	return out, ai, err
}

func (c *countingCreds) Clone() credentials.TransportCredentials {
	return &countingCreds{TransportCredentials: c.TransportCredentials.Clone(), failures: c.failures, log: c.log}
}

// Handshake failure reasons (label values of the failure counter).
const (
	ReasonUnknownAuthority = "unknown_authority"
	ReasonExpired          = "expired"
	ReasonPeerNotAllowed   = "peer_not_allowed"
	ReasonNoCertificate    = "no_certificate"
	ReasonOther            = "other"
)

func handshakeFailureReason(err error) string {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return ReasonUnknownAuthority
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return ReasonExpired
	case errors.Is(err, ErrPeerNotAllowed):
		return ReasonPeerNotAllowed
	// crypto/tls has no sentinel for a missing client certificate.
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return ReasonNoCertificate
	}
	return ReasonOther
}
