package kvstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"time"
)

// ProbeTLS connects to every https endpoint of c with its TLS settings and
// returns nil as soon as one accepts the connection, else why each refused.
// It exists for diagnosis: an etcd client retries a failing TLS handshake
// until its deadline and then reports only "context deadline exceeded",
// while a certificate problem is what an operator needs to read.
//
// With TLS 1.3 the server checks the client certificate after the client's
// side of the handshake completed, so a refusal (unknown CA, CN not on an
// allow-list) arrives as an alert on the first read; the probe reads briefly
// to catch it. A gRPC server speaks first (HTTP/2 settings), so an accepted
// connection answers at once.
func ProbeTLS(ctx context.Context, c *Config) error {
	if c.TLS == nil {
		return nil
	}
	var errs []error
	for _, ep := range c.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" {
			continue
		}
		if err := probeOne(ctx, u, c.TLS); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep, err))
			continue
		}
		return nil
	}
	return errors.Join(errs...)
}

func probeOne(ctx context.Context, u *url.URL, base *tls.Config) error {
	cfg := base.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	cfg.NextProtos = []string{"h2"}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return err // not a TLS problem
		}
		return fmt.Errorf("tls handshake: %w", err)
	}
	defer conn.Close()
	deadline := time.Now().Add(time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetReadDeadline(deadline); err != nil {
		return err
	}
	var b [1]byte
	_, err = conn.Read(b[:])
	switch {
	case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		return nil
	case errors.Is(err, io.EOF):
		return errors.New("tls: server closed the connection after the handshake (client certificate refused?)")
	default:
		return fmt.Errorf("tls: %w", err)
	}
}
