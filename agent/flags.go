package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Routing modes, as datapath.Config.Mode.
var routingModes = []string{"ebpf", "vxlan", "native"}

// Mesh modes: read the remotes through the local cluster's cache tier, or
// dial every remote (small meshes).
const (
	meshModeCache  = "cache"
	meshModeDirect = "direct"
)

// config is the validated command line.
type config struct {
	NodeName          string
	ClusterName       string
	ClusterID         uint32
	PodCIDRs          []netip.Prefix
	Kubeconfig        string
	ClustermeshConfig string
	MeshMode          string
	CacheConfig       string
	// ReconnectWindow spreads a lost cache session's first retry (cache
	// mode; clustermesh.Timing.ReconnectWindow).
	ReconnectWindow time.Duration
	RoutingMode     string
	TunnelPort      int
	MTU             int
	BPFRoot         string
	SyncTimeout     time.Duration
	StatusListen    string
	LogLevel        string
}

const (
	defaultClustermeshConfig = "/var/lib/podmesh/clustermesh"
	defaultCacheConfig       = "/var/lib/podmesh/cache/cache.yaml"
	defaultBPFRoot           = "/sys/fs/bpf/podmesh"
	defaultStatusListen      = "127.0.0.1:9876"
	defaultSyncTimeout       = 2 * time.Minute
	defaultReconnectWindow   = 10 * time.Second
)

// parseFlags parses and validates the agent's flags. getenv supplies
// NODE_NAME. Every problem is reported, each naming its flag.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("podmesh-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	var clusterID uint64
	var podCIDRs string
	fs.StringVar(&c.NodeName, "node-name", getenv("NODE_NAME"), "name of this node (env NODE_NAME)")
	fs.StringVar(&c.ClusterName, "cluster-name", "", "name of the local cluster")
	fs.Uint64Var(&clusterID, "cluster-id", 0, "ID of the local cluster (1..255)")
	fs.StringVar(&podCIDRs, "pod-cidrs", "", "comma-separated pod CIDRs of the local cluster")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig of the local cluster (in-cluster when empty)")
	fs.StringVar(&c.ClustermeshConfig, "clustermesh-config", defaultClustermeshConfig, "directory with one etcd-client YAML file per remote cluster")
	fs.StringVar(&c.MeshMode, "mesh-mode", meshModeCache, "cache: read every remote through the local cluster's clustermesh-apiserver cache (one connection, docs/scale.md); direct: dial every remote cluster (small meshes)")
	fs.StringVar(&c.CacheConfig, "cache-config", defaultCacheConfig, "cache mode: etcd-client YAML file of the local cluster's cache")
	fs.DurationVar(&c.ReconnectWindow, "cache-reconnect-window", defaultReconnectWindow, "cache mode: after losing its cache replica, wait a random time below this before listing the cache again, so the agents of a lost replica spread their re-lists over it (docs/scale.md)")
	fs.StringVar(&c.RoutingMode, "routing-mode", "ebpf", "datapath: "+strings.Join(routingModes, ", "))
	fs.IntVar(&c.TunnelPort, "tunnel-port", meshapi.DefaultTunnelUDPPort, "VXLAN UDP port")
	fs.IntVar(&c.MTU, "mtu", 0, "underlay MTU (0: the MTU of the link holding the node IP)")
	fs.StringVar(&c.BPFRoot, "bpf-root", defaultBPFRoot, "bpffs directory owned by podmesh")
	fs.DurationVar(&c.SyncTimeout, "sync-timeout", defaultSyncTimeout, "prune stale datapath entries after this long even if a remote has not synced")
	fs.StringVar(&c.StatusListen, "status-listen", defaultStatusListen, "address of the status, health and metrics server")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	var errs []error
	bad := func(name string, err error) { errs = append(errs, fmt.Errorf("--%s: %w", name, err)) }
	if c.NodeName == "" {
		bad("node-name", errors.New("required (or set NODE_NAME)"))
	} else if err := meshapi.ValidateObjectName(c.NodeName); err != nil {
		bad("node-name", err)
	}
	if c.ClusterName == "" {
		bad("cluster-name", errors.New("required"))
	} else if err := meshapi.ValidateClusterName(c.ClusterName); err != nil {
		bad("cluster-name", err)
	}
	if clusterID > meshapi.MaxClusterID || meshapi.ValidateClusterID(uint32(clusterID)) != nil {
		bad("cluster-id", fmt.Errorf("%d not in %d..%d", clusterID, meshapi.MinClusterID, meshapi.MaxClusterID))
	}
	c.ClusterID = uint32(clusterID)
	if podCIDRs == "" {
		bad("pod-cidrs", errors.New("required"))
	} else if cidrs, err := parsePrefixes(podCIDRs); err != nil {
		bad("pod-cidrs", err)
	} else if err := meshapi.ValidatePodCIDRs(cidrs); err != nil {
		bad("pod-cidrs", err)
	} else {
		c.PodCIDRs = cidrs
	}
	switch c.MeshMode {
	case meshModeDirect:
		if c.ClustermeshConfig == "" {
			bad("clustermesh-config", errors.New("must not be empty"))
		}
	case meshModeCache:
		if c.CacheConfig == "" {
			bad("cache-config", errors.New("must not be empty in cache mode"))
		}
	default:
		bad("mesh-mode", fmt.Errorf("%q is not one of %s, %s", c.MeshMode, meshModeCache, meshModeDirect))
	}
	if !slices.Contains(routingModes, c.RoutingMode) {
		bad("routing-mode", fmt.Errorf("%q is not one of %s", c.RoutingMode, strings.Join(routingModes, ", ")))
	}
	if c.TunnelPort < 1 || c.TunnelPort > 65535 {
		bad("tunnel-port", fmt.Errorf("%d not in 1..65535", c.TunnelPort))
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		bad("mtu", fmt.Errorf("%d not 0 (auto) or in 1280..65535", c.MTU))
	}
	if c.BPFRoot == "" && c.RoutingMode == "ebpf" {
		bad("bpf-root", errors.New("must not be empty in ebpf mode"))
	}
	if c.ReconnectWindow <= 0 {
		bad("cache-reconnect-window", fmt.Errorf("%s must be positive", c.ReconnectWindow))
	}
	if c.SyncTimeout <= 0 {
		bad("sync-timeout", fmt.Errorf("%s must be positive", c.SyncTimeout))
	}
	if err := checkListen(c.StatusListen); err != nil {
		bad("status-listen", err)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.LogLevel) {
		bad("log-level", fmt.Errorf("%q is not one of debug, info, warn, error", c.LogLevel))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &c, nil
}

func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR", f)
		}
		out = append(out, p)
	}
	return out, nil
}

func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			return fmt.Errorf("%q: host must be an IP address or localhost", addr)
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: bad port", addr)
	}
	return nil
}
