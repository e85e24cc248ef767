package kvstore

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"sigs.k8s.io/yaml"
)

// MaxConfigFileSize bounds an etcd-client YAML file and each PEM file it names.
const MaxConfigFileSize = 1 << 20

// ClientFile is the etcd-client YAML document: where a remote cluster's
// etcd (proxy) listens and the TLS material to reach it. It is the one
// definition of the format; podmesh-certs renders it, LoadConfig reads it.
// Relative paths resolve against the file's directory.
type ClientFile struct {
	Endpoints     []string `json:"endpoints"`
	TrustedCAFile string   `json:"trusted-ca-file"`
	CertFile      string   `json:"cert-file"`
	KeyFile       string   `json:"key-file"`
}

// Config is a loaded etcd-client YAML file. Paths are absolute after
// LoadConfig.
type Config struct {
	// Path is the file the config was read from.
	Path string `json:"-"`
	ClientFile

	// Hash identifies the YAML plus the content of every file it names.
	Hash [sha256.Size]byte `json:"-"`
	// TLS is built from the files named above.
	TLS *tls.Config `json:"-"`
}

// LoadConfig reads an etcd-client YAML file, resolves relative paths against
// the file's directory, loads the certificates and key, and computes Hash.
// Every error names the file at fault. A key file readable by group or others
// is accepted with a warning (the expectation is 0600).
func LoadConfig(path string, log logrus.FieldLogger) (*Config, error) {
	raw, err := readBounded(path)
	if err != nil {
		return nil, fmt.Errorf("read etcd config %s: %w", path, err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		// Unknown keys are tolerated (etcd-client YAML has more options than
		// podmesh uses); only a malformed document is an error.
		if err2 := yaml.Unmarshal(raw, &c); err2 != nil {
			return nil, fmt.Errorf("parse etcd config %s: %w", path, err2)
		}
	}
	c.Path = path
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("etcd config %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	for _, p := range []*string{&c.TrustedCAFile, &c.CertFile, &c.KeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}

	h := sha256.New()
	writeHashPart(h, raw)
	var caPEM, certPEM, keyPEM []byte
	if c.TrustedCAFile != "" {
		if caPEM, err = readBounded(c.TrustedCAFile); err != nil {
			return nil, fmt.Errorf("etcd config %s: read trusted CA: %w", path, err)
		}
	}
	writeHashPart(h, caPEM)
	if c.CertFile != "" {
		if certPEM, err = readBounded(c.CertFile); err != nil {
			return nil, fmt.Errorf("etcd config %s: read certificate: %w", path, err)
		}
		if keyPEM, err = readBounded(c.KeyFile); err != nil {
			return nil, fmt.Errorf("etcd config %s: read key %s: %w", path, c.KeyFile, err)
		}
		CheckKeyMode(c.KeyFile, log)
	}
	writeHashPart(h, certPEM)
	writeHashPart(h, keyPEM)
	copy(c.Hash[:], h.Sum(nil))

	tlsCfg, err := parsedTLS.get(c.Hash, caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("etcd config %s: %w", path, err)
	}
	c.TLS = tlsCfg
	return &c, nil
}

func (c *Config) validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("no endpoints")
	}
	secure := false
	for _, e := range c.Endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Host == "" {
			return fmt.Errorf("endpoint %q: not a URL with a host", e)
		}
		switch u.Scheme {
		case "https":
			secure = true
		case "http":
		default:
			return fmt.Errorf("endpoint %q: scheme must be https or http", e)
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("cert-file and key-file must be given together")
	}
	if secure && c.TrustedCAFile == "" {
		return errors.New("https endpoints need trusted-ca-file")
	}
	return nil
}

// tlsMemo keeps the TLS configurations parsed from PEM contents, so that a
// directory rescanned every half second (a cache reads one file per remote
// cluster, hundreds of them) parses a certificate and key only when they
// change. It is keyed by Config.Hash, which covers the YAML (and so which
// files it names) and their contents. Each caller gets its own Clone; the
// parsed certificates and pools are shared and never written.
type tlsMemo struct {
	mu     sync.Mutex
	parsed map[[sha256.Size]byte]*tls.Config
}

// maxTLSMemo bounds the memo; when full it starts over.
const maxTLSMemo = 4096

var parsedTLS = &tlsMemo{}

func (m *tlsMemo) get(hash [sha256.Size]byte, caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	if caPEM == nil && certPEM == nil {
		return nil, nil
	}
	m.mu.Lock()
	cfg, ok := m.parsed[hash]
	m.mu.Unlock()
	if ok {
		return cfg.Clone(), nil
	}
	cfg, err := buildTLS(caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, err // not kept: a broken file is read again until fixed
	}
	m.mu.Lock()
	if m.parsed == nil || len(m.parsed) >= maxTLSMemo {
		m.parsed = make(map[[sha256.Size]byte]*tls.Config)
	}
	m.parsed[hash] = cfg
	m.mu.Unlock()
	return cfg.Clone(), nil
}

func buildTLS(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	if caPEM == nil && certPEM == nil {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caPEM != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("trusted CA: no PEM certificate found")
		}
		cfg.RootCAs = pool
	}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			// The error of X509KeyPair never contains key bytes.
			return nil, fmt.Errorf("client certificate and key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// CheckKeyMode warns when a key file is readable by group or others. A nil
// logger disables the check.
func CheckKeyMode(path string, log logrus.FieldLogger) {
	fi, err := os.Stat(path)
	if err != nil || log == nil {
		return
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		log.WithFields(logrus.Fields{"file": path, "mode": fmt.Sprintf("%#o", mode)}).
			Warn("Key file is readable by group or others; expected 0600")
	}
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("%s is a directory", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxConfigFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxConfigFileSize {
		return nil, fmt.Errorf("%s: over %d bytes", path, MaxConfigFileSize)
	}
	return b, nil
}

func writeHashPart(h interface{ Write([]byte) (int, error) }, b []byte) {
	var n [8]byte
	l := uint64(len(b))
	for i := range n {
		n[i] = byte(l >> (8 * i))
	}
	h.Write(n[:])
	h.Write(b)
}

// ClientOptions tune a client built by NewClient.
type ClientOptions struct {
	// DialTimeout bounds the first connection; default 5s.
	DialTimeout time.Duration
	// KeepAlive is the gRPC keepalive ping interval; default 10s (gRPC
	// raises a shorter one to 10s, and servers refuse more frequent pings).
	KeepAlive time.Duration
	// KeepAliveTimeout is how long a ping may go unanswered before the
	// connection is closed; default KeepAlive.
	KeepAliveTimeout time.Duration
	// Dial, when set, opens the TCP connections (addr is an endpoint's
	// host:port); TLS still verifies the endpoint's host name. The agent
	// uses it to reach a Service by its name without cluster DNS.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// NewClient builds an etcd client from c. The client never syncs its
// endpoint list from the server: a remote is reached only at the addresses
// its file names (a proxy does not advertise usable member URLs).
func NewClient(c *Config, o ClientOptions) (*clientv3.Client, error) {
	if o.DialTimeout == 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 10 * time.Second
	}
	if o.KeepAliveTimeout == 0 {
		o.KeepAliveTimeout = o.KeepAlive
	}
	var tlsCfg *tls.Config
	if c.TLS != nil {
		tlsCfg = c.TLS.Clone()
	}
	var dialOpts []grpc.DialOption
	if o.Dial != nil {
		dialOpts = append(dialOpts, grpc.WithContextDialer(o.Dial))
	}
	cli, err := clientv3.New(clientv3.Config{
		DialOptions:          dialOpts,
		Endpoints:            c.Endpoints,
		TLS:                  tlsCfg,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    o.KeepAlive,
		DialKeepAliveTimeout: o.KeepAliveTimeout,
		PermitWithoutStream:  true,
		RejectOldCluster:     false,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("create etcd client for %s: %w", c.Path, err)
	}
	return cli, nil
}
