package etcdserver

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Users and roles of the embedded etcd.
const (
	RootUser   = "root"
	WriterUser = "podmesh-writer"
	ReaderUser = "podmesh-reader"
	WriterRole = "podmesh-writer"
	ReaderRole = "podmesh-reader"
	// CacheReaderUser is the identity of the proxy that serves the cache to
	// this cluster's own agents: its role reads CachePrefix only.
	CacheReaderUser = "podmesh-cache-reader"
	CacheReaderRole = "podmesh-cache-reader"
	// CachePrefix is meshapi.CacheRoot's top level: the writer may write
	// it, the cache reader read it, the reader (the peers' proxy) nothing
	// of it.
	CachePrefix = "podmesh-cache/"
	// KeyPrefix is the part of the keyspace the writer may write and the
	// reader may read.
	KeyPrefix = "podmesh/"
	// lostLeaderKey is watched by etcd's gRPC proxy to detect leader loss;
	// the reader must be allowed to read it or that watch fails in a loop.
	lostLeaderKey = "__lostleader"

	rootPasswordFile = "root-password"
	etcdSubdir       = "etcd"
	startTimeout     = time.Minute
	dialTimeout      = 10 * time.Second
)

// Config says where and how to run the embedded etcd.
type Config struct {
	// DataDir holds etcd's data (in DataDir/etcd) and the root password. It
	// is created 0700 if missing and reused across restarts.
	DataDir string
	// ListenClient is the host:port etcd serves clients on; the host must be
	// a loopback address. Default 127.0.0.1:0 (any free port).
	ListenClient string
	// AutoCompactionRetention keeps this much history for resuming
	// watchers (periodic compaction). Default one hour.
	AutoCompactionRetention time.Duration
	// UnsafeNoFsync turns fsync off. Tests and benchmarks only.
	UnsafeNoFsync bool
	// Log receives this package's messages.
	Log logrus.FieldLogger
	// EtcdLog receives etcd's own log; nil means errors to stderr.
	EtcdLog *zap.Logger
}

// Server is a running embedded etcd with auth enabled.
type Server struct {
	// Endpoint is the client URL, http://127.0.0.1:<port>. It also serves
	// etcd's own /metrics and /health.
	Endpoint string
	// Writer is authenticated as WriterUser: read and write under KeyPrefix.
	Writer *clientv3.Client
	// Reader is authenticated as ReaderUser: read-only under KeyPrefix.
	Reader *clientv3.Client
	// CacheReader is authenticated as CacheReaderUser: read-only under
	// CachePrefix.
	CacheReader *clientv3.Client

	etcd      *embed.Etcd
	passwords map[string]string // user -> password; never logged
	log       logrus.FieldLogger
	// closing is set by Close; etcd's errors about its own listeners
	// closing are expected then and not logged.
	closing *atomic.Bool
}

// Start starts etcd, sets up (or rotates) users, roles and passwords, and
// returns writer and reader clients. Close releases everything.
func Start(ctx context.Context, cfg Config) (s *Server, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("start etcd: empty data directory")
	}
	if cfg.ListenClient == "" {
		cfg.ListenClient = "127.0.0.1:0"
	}
	if err := checkLoopback(cfg.ListenClient); err != nil {
		return nil, fmt.Errorf("start etcd: listen address: %w", err)
	}
	if cfg.AutoCompactionRetention == 0 {
		cfg.AutoCompactionRetention = time.Hour
	}
	if cfg.Log == nil {
		l := logrus.New()
		l.SetOutput(os.Stderr)
		cfg.Log = l
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}

	s, err = start(ctx, cfg)
	if errors.Is(err, errRootLogin) {
		// The stored root password does not open this data directory:
		// rebuild it. The sync refills it from Kubernetes.
		cfg.Log.WithError(err).Warn("Cannot log in to the existing etcd data as root; wiping the data directory")
		if rmErr := os.RemoveAll(filepath.Join(cfg.DataDir, etcdSubdir)); rmErr != nil {
			return nil, fmt.Errorf("wipe etcd data directory: %w", rmErr)
		}
		s, err = start(ctx, cfg)
	}
	return s, err
}

var errRootLogin = errors.New("log in as root with the stored password")

func start(ctx context.Context, cfg Config) (_ *Server, err error) {
	dir := filepath.Join(cfg.DataDir, etcdSubdir)
	pwFile := filepath.Join(cfg.DataDir, rootPasswordFile)
	existing := dirExists(filepath.Join(dir, "member"))
	var storedRoot []string
	if existing {
		storedRoot = readPasswords(pwFile, pwFile+".new")
		if len(storedRoot) == 0 {
			return nil, fmt.Errorf("%w: no stored root password in %s", errRootLogin, cfg.DataDir)
		}
	}

	closing := &atomic.Bool{}
	ecfg, err := embedConfig(cfg, dir, closing)
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(ecfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	s := &Server{etcd: e, log: cfg.Log, passwords: map[string]string{}, closing: closing}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for embedded etcd: %w", ctx.Err())
	case <-time.After(startTimeout):
		return nil, fmt.Errorf("wait for embedded etcd: not ready after %s", startTimeout)
	}
	s.Endpoint = "http://" + e.Clients[0].Addr().String()

	root, err := s.rootClient(ctx, storedRoot)
	if err != nil {
		return nil, err
	}
	defer root.Close()

	newRoot, err := randomPassword()
	if err != nil {
		return nil, err
	}
	if existing {
		// Write the new password first: if we die between the change and
		// the rename, the next start still finds it in the .new file.
		if err := writeSecret(pwFile+".new", newRoot); err != nil {
			return nil, err
		}
		if _, err := root.UserChangePassword(ctx, RootUser, newRoot); err != nil {
			return nil, fmt.Errorf("rotate root password: %w", err)
		}
		if err := os.Rename(pwFile+".new", pwFile); err != nil {
			return nil, fmt.Errorf("store root password: %w", err)
		}
		// The change revoked the root session; log in again.
		root.Close()
		if root, err = s.dial(ctx, RootUser, newRoot); err != nil {
			return nil, err
		}
		defer root.Close()
	} else {
		if err := ensureUser(ctx, root, RootUser, newRoot, "root"); err != nil {
			return nil, err
		}
		if err := writeSecret(pwFile+".new", newRoot); err != nil {
			return nil, err
		}
		if err := os.Rename(pwFile+".new", pwFile); err != nil {
			return nil, fmt.Errorf("store root password: %w", err)
		}
	}

	if err := ensureRoles(ctx, root); err != nil {
		return nil, err
	}
	for _, u := range []struct{ user, role string }{{WriterUser, WriterRole}, {ReaderUser, ReaderRole}, {CacheReaderUser, CacheReaderRole}} {
		pw, err := randomPassword()
		if err != nil {
			return nil, err
		}
		if err := ensureUser(ctx, root, u.user, pw, u.role); err != nil {
			return nil, err
		}
		s.passwords[u.user] = pw
	}
	if !existing {
		if _, err := root.AuthEnable(ctx); err != nil {
			return nil, fmt.Errorf("enable etcd auth: %w", err)
		}
	}

	if s.Writer, err = s.NewClient(ctx, WriterUser); err != nil {
		return nil, err
	}
	if s.Reader, err = s.NewClient(ctx, ReaderUser); err != nil {
		return nil, err
	}
	if s.CacheReader, err = s.NewClient(ctx, CacheReaderUser); err != nil {
		return nil, err
	}
	cfg.Log.WithFields(logrus.Fields{"endpoint": s.Endpoint, "dataDir": cfg.DataDir, "reused": existing}).Info("Embedded etcd ready")
	return s, nil
}

// rootClient logs in as root with one of the stored passwords, or, on a new
// data directory (auth not enabled yet), connects without credentials.
func (s *Server) rootClient(ctx context.Context, stored []string) (*clientv3.Client, error) {
	if len(stored) == 0 {
		return s.dial(ctx, "", "")
	}
	var errs []error
	for _, pw := range stored {
		c, err := s.dial(ctx, RootUser, pw)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w: %w", errRootLogin, errors.Join(errs...))
}

// NewClient returns a new client authenticated as WriterUser or ReaderUser,
// e.g. for a second proxy in front of the same etcd. The client lives until
// it is closed (ctx only bounds the connection attempt).
func (s *Server) NewClient(ctx context.Context, user string) (*clientv3.Client, error) {
	pw, ok := s.passwords[user]
	if !ok {
		return nil, fmt.Errorf("new etcd client: unknown user %q", user)
	}
	return s.dial(ctx, user, pw)
}

func (s *Server) dial(ctx context.Context, user, password string) (*clientv3.Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect to embedded etcd as %q: %w", user, err)
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint},
		Username:    user,
		Password:    password,
		DialTimeout: dialTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to embedded etcd as %q: %w", user, err)
	}
	return c, nil
}

// Close closes the clients and stops etcd.
func (s *Server) Close() error {
	var errs []error
	for _, c := range []*clientv3.Client{s.Writer, s.Reader, s.CacheReader} {
		if c != nil {
			if err := c.Close(); err != nil && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("close etcd client: %w", err))
			}
		}
	}
	if s.etcd != nil {
		s.closing.Store(true)
		s.etcd.Close()
	}
	return errors.Join(errs...)
}

// Err reports a fatal etcd error while it runs.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// MetricsURL is etcd's own Prometheus endpoint (e.g. the watcher gauges).
func (s *Server) MetricsURL() string { return s.Endpoint + "/metrics" }

func embedConfig(cfg Config, dir string, closing *atomic.Bool) (*embed.Config, error) {
	ecfg := embed.NewConfig()
	ecfg.Name = "podmesh"
	ecfg.Dir = dir
	client, err := url.Parse("http://" + cfg.ListenClient)
	if err != nil {
		return nil, fmt.Errorf("parse etcd listen address %q: %w", cfg.ListenClient, err)
	}
	// The peer port is never dialled (one member), but etcd needs one.
	peer, _ := url.Parse("http://127.0.0.1:0")
	ecfg.ListenClientUrls = []url.URL{*client}
	ecfg.AdvertiseClientUrls = []url.URL{*client}
	ecfg.ListenPeerUrls = []url.URL{*peer}
	ecfg.AdvertisePeerUrls = []url.URL{*peer}
	ecfg.InitialCluster = ecfg.InitialClusterFromName(ecfg.Name)
	ecfg.AutoCompactionMode = embed.CompactorModePeriodic
	ecfg.AutoCompactionRetention = cfg.AutoCompactionRetention.String()
	ecfg.UnsafeNoFsync = cfg.UnsafeNoFsync
	lg := cfg.EtcdLog
	if lg == nil {
		lg = zapErrorLogger(closing)
	}
	ecfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	return ecfg, nil
}

func zapErrorLogger(closing *atomic.Bool) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(os.Stderr), zapcore.ErrorLevel)
	return zap.New(&quietOnClose{Core: core, closing: closing}).Named("etcd")
}

// quietOnClose drops etcd's log entries once Close has begun: etcd reports
// its own listeners closing as errors.
type quietOnClose struct {
	zapcore.Core
	closing *atomic.Bool
}

func (q *quietOnClose) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if q.closing.Load() {
		return ce
	}
	return q.Core.Check(e, ce)
}

func (q *quietOnClose) With(fields []zapcore.Field) zapcore.Core {
	return &quietOnClose{Core: q.Core.With(fields), closing: q.closing}
}

func ensureRoles(ctx context.Context, root *clientv3.Client) error {
	end := clientv3.GetPrefixRangeEnd(KeyPrefix)
	cacheEnd := clientv3.GetPrefixRangeEnd(CachePrefix)
	grants := []struct {
		role      string
		key, end  string
		permisson clientv3.PermissionType
	}{
		{WriterRole, KeyPrefix, end, clientv3.PermissionType(clientv3.PermReadWrite)},
		{ReaderRole, KeyPrefix, end, clientv3.PermissionType(clientv3.PermRead)},
		{ReaderRole, lostLeaderKey, "", clientv3.PermissionType(clientv3.PermRead)},
		{WriterRole, CachePrefix, cacheEnd, clientv3.PermissionType(clientv3.PermReadWrite)},
		{CacheReaderRole, CachePrefix, cacheEnd, clientv3.PermissionType(clientv3.PermRead)},
		{CacheReaderRole, lostLeaderKey, "", clientv3.PermissionType(clientv3.PermRead)},
	}
	for _, g := range grants {
		if _, err := root.RoleAdd(ctx, g.role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return fmt.Errorf("add etcd role %s: %w", g.role, err)
		}
		if _, err := root.RoleGrantPermission(ctx, g.role, g.key, g.end, g.permisson); err != nil {
			return fmt.Errorf("grant etcd role %s on %q: %w", g.role, g.key, err)
		}
	}
	return nil
}

func ensureUser(ctx context.Context, root *clientv3.Client, user, password, role string) error {
	if _, err := root.UserAdd(ctx, user, password); err != nil {
		if !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return fmt.Errorf("add etcd user %s: %w", user, err)
		}
		if _, err := root.UserChangePassword(ctx, user, password); err != nil {
			return fmt.Errorf("set password of etcd user %s: %w", user, err)
		}
	}
	if _, err := root.UserGrantRole(ctx, user, role); err != nil {
		return fmt.Errorf("grant role %s to etcd user %s: %w", role, user, err)
	}
	return nil
}

func randomPassword() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate password: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func writeSecret(path, secret string) error {
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readPasswords returns the non-empty contents of the files that exist.
func readPasswords(paths ...string) []string {
	var out []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && len(b) > 0 {
			out = append(out, string(b))
		}
	}
	return out
}

func dirExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

func checkLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("%q: %w", hostport, err)
	}
	a, err := netip.ParseAddr(host)
	if err != nil || !a.IsLoopback() {
		return fmt.Errorf("%q: etcd must listen on a loopback IP address", hostport)
	}
	return nil
}
