package server

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/kubesync"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Config is everything the flags set.
type Config struct {
	ClusterName string
	ClusterID   uint32
	PodCIDRs    []netip.Prefix
	// Kubeconfig is a kubeconfig path; empty means in-cluster config.
	Kubeconfig       string
	Listen           string
	TLSCert          string
	TLSKey           string
	TLSClientCA      string
	AllowedPeers     []string
	DataDir          string
	HealthListen     string
	EtcdListenClient string
	CoalesceDelay    time.Duration
	SyncWorkers      int
	// ClusterMeshConfig is the directory of per-remote etcd-client YAML
	// files (the agents' format); when set, the apiserver imports the
	// remotes' exported services (package importer).
	ClusterMeshConfig string
	// CacheListen is the address of the cache tier's read-only proxy for
	// this cluster's own agents; the cache runs when it and
	// ClusterMeshConfig are set.
	CacheListen string
	// CacheAllowedClients are the client certificate CNs the cache proxy
	// accepts (default local-<cluster>).
	CacheAllowedClients []string
	// CacheSyncTimeout bounds the wait for every remote's first sync
	// before the cache declares itself synced.
	CacheSyncTimeout time.Duration
	// LeaderElectionNamespace holds the importer's Lease; empty disables
	// leader election (one replica only). LeaderElectionID names this
	// instance (the pod name).
	LeaderElectionNamespace string
	LeaderElectionID        string
	// Namespace holds EstablishedConfigMap; empty: the cluster-config
	// carries no established time (agents then rank by cluster ID).
	Namespace string
	// UnsafeNoFsync turns etcd's fsync off (tests and benchmarks only).
	UnsafeNoFsync bool
	LogLevel      string
}

// ParseFlags parses command-line arguments and validates the result. The
// error lists every problem found, one per line.
func ParseFlags(args []string, output io.Writer) (Config, error) {
	var cfg Config
	fs := flag.NewFlagSet("clustermesh-apiserver", flag.ContinueOnError)
	fs.SetOutput(output)
	var clusterID, podCIDRs, peers, cacheClients string
	fs.StringVar(&cfg.ClusterName, "cluster-name", "", "name of this cluster (required)")
	fs.StringVar(&clusterID, "cluster-id", "", "ID of this cluster, 1..255 (required)")
	fs.StringVar(&podCIDRs, "pod-cidrs", "", "comma-separated pod CIDRs of this cluster (required)")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.StringVar(&cfg.Listen, "listen", ":2379", "address of the read-only etcd proxy")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "proxy serving certificate (required)")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "proxy serving key (required)")
	fs.StringVar(&cfg.TLSClientCA, "tls-client-ca", "", "CA that peer client certificates must chain to (required)")
	fs.StringVar(&peers, "allowed-peers", "", "comma-separated client certificate CNs allowed to connect, e.g. remote-west (required)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "embedded etcd data directory, reused across restarts (required)")
	fs.StringVar(&cfg.HealthListen, "health-listen", ":9880", "address of /healthz, /readyz and /metrics")
	fs.StringVar(&cfg.EtcdListenClient, "etcd-listen-client", "127.0.0.1:0", "loopback address of the embedded etcd")
	fs.DurationVar(&cfg.CoalesceDelay, "coalesce-delay", kubesync.DefaultCoalesceDelay, "shortest time between two writes of one key: an idle key is written at once, a busy one once per this window (coalesces bursts)")
	fs.IntVar(&cfg.SyncWorkers, "sync-workers", kubesync.DefaultWorkers, "parallel etcd writers")
	fs.StringVar(&cfg.ClusterMeshConfig, "clustermesh-config", "", "directory of per-remote etcd-client YAML files (the agents' format); when set, import the remotes' exported services into this cluster")
	fs.StringVar(&cfg.CacheListen, "cache-listen", ":2381", "address of the cache tier's read-only proxy for this cluster's own agents (with --clustermesh-config); empty disables the cache")
	fs.StringVar(&cacheClients, "cache-allowed-clients", "", "comma-separated client certificate CNs the cache proxy accepts (default local-<cluster-name>)")
	fs.DurationVar(&cfg.CacheSyncTimeout, "cache-sync-timeout", time.Minute, "the cache declares itself synced after this long even if a remote has not synced")
	fs.StringVar(&cfg.LeaderElectionNamespace, "leader-election-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the service importer's Lease (one writer among replicas); empty disables leader election")
	fs.StringVar(&cfg.LeaderElectionID, "leader-election-id", defaultIdentity(), "this instance's identity in the Lease (the pod name)")
	fs.StringVar(&cfg.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the ConfigMap "+EstablishedConfigMap+" that records when this cluster joined the mesh; empty: not recorded")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "log level (debug, info, warn, error)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	var errs []error
	idKnown := false
	if clusterID == "" {
		errs = append(errs, errors.New("--cluster-id: required"))
	} else if id, err := strconv.ParseUint(clusterID, 10, 32); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-id %q: not a number", clusterID))
	} else {
		cfg.ClusterID = uint32(id)
		idKnown = true
	}
	if podCIDRs == "" {
		errs = append(errs, errors.New("--pod-cidrs: required"))
	} else {
		for _, s := range splitList(podCIDRs) {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("--pod-cidrs: %q is not a CIDR: %w", s, err))
				continue
			}
			cfg.PodCIDRs = append(cfg.PodCIDRs, p)
		}
	}
	cfg.AllowedPeers = splitList(peers)
	cfg.CacheAllowedClients = splitList(cacheClients)
	if len(cfg.CacheAllowedClients) == 0 && cfg.ClusterName != "" {
		cfg.CacheAllowedClients = []string{certs.LocalCN(cfg.ClusterName)}
	}
	if err := cfg.validate(idKnown); err != nil {
		errs = append(errs, err)
	}
	return cfg, errors.Join(errs...)
}

// Validate checks a Config and reports every problem.
func (c *Config) Validate() error { return c.validate(true) }

func (c *Config) validate(checkID bool) error {
	var errs []error
	if c.ClusterName == "" {
		errs = append(errs, errors.New("--cluster-name: required"))
	} else if err := meshapi.ValidateClusterName(c.ClusterName); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-name: %w", err))
	}
	if checkID {
		if err := meshapi.ValidateClusterID(c.ClusterID); err != nil {
			errs = append(errs, fmt.Errorf("--cluster-id: %w", err))
		}
	}
	if len(c.PodCIDRs) > 0 {
		if err := meshapi.ValidatePodCIDRs(c.PodCIDRs); err != nil {
			errs = append(errs, fmt.Errorf("--pod-cidrs: %w", err))
		}
	}
	for _, f := range []struct{ flag, value string }{{"--tls-cert", c.TLSCert}, {"--tls-key", c.TLSKey}, {"--tls-client-ca", c.TLSClientCA}, {"--data-dir", c.DataDir}} {
		if f.value == "" {
			errs = append(errs, fmt.Errorf("%s: required", f.flag))
		}
	}
	if len(c.AllowedPeers) == 0 {
		errs = append(errs, errors.New("--allowed-peers: required (at least one client certificate CN)"))
	}
	for _, p := range c.AllowedPeers {
		if strings.ContainsAny(p, " \t") {
			errs = append(errs, fmt.Errorf("--allowed-peers: %q contains white space", p))
		}
	}
	if c.CacheEnabled() {
		if _, _, err := net.SplitHostPort(c.CacheListen); err != nil {
			errs = append(errs, fmt.Errorf("--cache-listen %q: %w", c.CacheListen, err))
		}
		if len(c.CacheAllowedClients) == 0 {
			errs = append(errs, errors.New("--cache-allowed-clients: required with --cache-listen"))
		}
		for _, p := range c.CacheAllowedClients {
			if slices.Contains(c.AllowedPeers, p) {
				errs = append(errs, fmt.Errorf("--cache-allowed-clients: %q is also an allowed peer: a peer must never read the cache", p))
			}
		}
	}
	for _, f := range []struct{ flag, value string }{{"--listen", c.Listen}, {"--health-listen", c.HealthListen}} {
		if _, _, err := net.SplitHostPort(f.value); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", f.flag, f.value, err))
		}
	}
	if host, _, err := net.SplitHostPort(c.EtcdListenClient); err != nil {
		errs = append(errs, fmt.Errorf("--etcd-listen-client %q: %w", c.EtcdListenClient, err))
	} else if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
		errs = append(errs, fmt.Errorf("--etcd-listen-client %q: must be a loopback IP address", c.EtcdListenClient))
	}
	if c.ClusterMeshConfig != "" && c.LeaderElectionNamespace != "" && c.LeaderElectionID == "" {
		errs = append(errs, errors.New("--leader-election-id: required with --leader-election-namespace"))
	}
	if c.SyncWorkers < 1 {
		errs = append(errs, fmt.Errorf("--sync-workers %d: must be at least 1", c.SyncWorkers))
	}
	return errors.Join(errs...)
}

// CacheEnabled reports whether the cache tier runs.
func (c *Config) CacheEnabled() bool { return c.ClusterMeshConfig != "" && c.CacheListen != "" }

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func defaultIdentity() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}
