package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// reloadCheckInterval bounds how often the files are read again.
const reloadCheckInterval = time.Second

// ReloadingServerTLS is LoadServerTLS for certificates that rotate: the
// returned configuration re-reads the three files (at most once a second,
// on a new connection) and serves new connections with the new certificate
// and client CA as soon as they parse. A Secret volume swaps its files
// atomically, so a half-written set is not expected; if one is seen anyway,
// the previous configuration stays and a warning is logged.
// Established connections are not affected.
func ReloadingServerTLS(certFile, keyFile, clientCAFile string, allowedPeers []string, log logrus.FieldLogger) (*tls.Config, error) {
	r := &reloader{certFile: certFile, keyFile: keyFile, caFile: clientCAFile, allowed: allowedPeers, log: log}
	var err error
	if r.cfg, err = LoadServerTLS(certFile, keyFile, clientCAFile, allowedPeers); err != nil {
		return nil, err
	}
	contents, err := r.read()
	if err != nil {
		return nil, err
	}
	r.contents, r.checked = contents, time.Now()
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2"},
		GetConfigForClient: r.configForClient,
	}, nil
}

type reloader struct {
	certFile, keyFile, caFile string
	allowed                   []string
	log                       logrus.FieldLogger

	// mu protects the fields below.
	mu       sync.Mutex
	cfg      *tls.Config
	contents [][]byte
	checked  time.Time
}

func (r *reloader) read() ([][]byte, error) {
	var out [][]byte
	for _, f := range []string{r.certFile, r.keyFile, r.caFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		out = append(out, b)
	}
	return out, nil
}

func (r *reloader) configForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < reloadCheckInterval {
		return r.cfg, nil
	}
	r.checked = time.Now()
	contents, err := r.read()
	if err != nil {
		r.log.WithError(err).Warn("Cannot re-read TLS files; keeping the previous ones")
		return r.cfg, nil
	}
	if slices.EqualFunc(contents, r.contents, bytes.Equal) {
		return r.cfg, nil
	}
	cfg, err := LoadServerTLS(r.certFile, r.keyFile, r.caFile, r.allowed)
	if err != nil {
		r.log.WithError(err).Warn("Changed TLS files do not load; keeping the previous ones")
		return r.cfg, nil
	}
	r.cfg, r.contents = cfg, contents
	r.log.WithField("cert", r.certFile).Info("Reloaded the proxy's TLS certificate and client CA")
	return r.cfg, nil
}
