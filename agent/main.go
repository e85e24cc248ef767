package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/datapath"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := mainErr(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return // the flag package printed the usage
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podmesh-agent:", err)
		stop()
		os.Exit(1)
	}
}

func mainErr(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "status" {
		return statusCommand(ctx, args[1:], stdout, stderr)
	}
	cfg, err := parseFlags(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	log := logrus.New()
	log.SetOutput(stderr)
	lvl, _ := logrus.ParseLevel(cfg.LogLevel)
	log.SetLevel(lvl)
	cs, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	return run(ctx, cfg, deps{kube: cs, newDatapath: newReconciler, log: log})
}

// dataplane is what the agent needs of the datapath reconciler.
type dataplane interface {
	Run(ctx context.Context) error
	Status() datapath.Status
	Collectors() []prometheus.Collector
}

// deps are the agent's outside world, replaceable in tests.
type deps struct {
	kube        kubernetes.Interface
	newDatapath func(datapath.Config) (dataplane, error)
	log         logrus.FieldLogger
	// listening, when set, is told the status server's address.
	listening func(addr string)
}

func newReconciler(c datapath.Config) (dataplane, error) { return datapath.New(c) }

// remoteClusters is what the agent runs of pkg/clustermesh: a Mesh (direct
// mode) or a CacheMesh (cache mode).
type remoteClusters interface {
	meshStatus
	Run(ctx context.Context) error
	Collector() prometheus.Collector
}

// newMesh builds the remote-cluster watcher of cfg's mesh mode.
func newMesh(cfg *config, opts clustermesh.Options) (remoteClusters, error) {
	if cfg.MeshMode == meshModeCache {
		opts.CacheFile = cfg.CacheConfig
		return clustermesh.NewCache(opts)
	}
	opts.ConfigDir = cfg.ClustermeshConfig
	return clustermesh.New(opts)
}

// run wires the parts and runs them until ctx is done or one fails.
func run(ctx context.Context, cfg *config, d deps) error {
	log := d.log.WithFields(logrus.Fields{"node": cfg.NodeName, "localCluster": cfg.ClusterName})
	node, err := waitLocalNode(ctx, d.kube, cfg.NodeName, cfg.PodCIDRs, log)
	if err != nil {
		return err
	}
	log.WithFields(logrus.Fields{"tunnelIP": node.TunnelIP.String(), "podCIDRs": fmt.Sprint(node.PodCIDRs)}).Info("Local node found")

	desired := datapath.NewDesired()
	dp, err := d.newDatapath(datapath.Config{
		Mode: cfg.RoutingMode, LocalIP: node.TunnelIP, TunnelPort: cfg.TunnelPort, MTU: cfg.MTU,
		BPFRoot: cfg.BPFRoot, LocalClusterID: cfg.ClusterID, Desired: desired, Log: log.WithField("component", "datapath"),
	})
	if err != nil {
		return fmt.Errorf("start datapath: %w", err)
	}
	mesh, err := newMesh(cfg, clustermesh.Options{
		LocalCluster: cfg.ClusterName, LocalClusterID: cfg.ClusterID, LocalPodCIDRs: cfg.PodCIDRs,
		LocalTunnelIP: node.TunnelIP, Desired: desired, Dial: serviceDialer(d.kube),
		SyncTimeout: cfg.SyncTimeout, Programmed: func() map[string]int { return dp.Status().Programmed },
		Timing: clustermesh.Timing{ReconnectWindow: cfg.ReconnectWindow},
		Log:    log.WithFields(logrus.Fields{"component": "clustermesh", "meshMode": cfg.MeshMode}),
	})
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	cols := append([]prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		mesh.Collector(),
	}, dp.Collectors()...)
	for _, c := range cols {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	ln, err := net.Listen("tcp", cfg.StatusListen)
	if err != nil {
		return fmt.Errorf("--status-listen: %w", err)
	}
	if d.listening != nil {
		d.listening(ln.Addr().String())
	}
	srv := &statusServer{node: node, mesh: mesh, datapath: dp, gatherer: reg, log: log}

	// Each part runs until ctx is done; the first to fail stops the others.
	g, gctx := errgroup.WithContext(ctx)
	start := func(name string, f func(context.Context) error) {
		g.Go(func() error {
			err := f(gctx)
			if err == nil || (errors.Is(err, context.Canceled) && gctx.Err() != nil) {
				return nil // stopped because another part failed, or on request
			}
			return fmt.Errorf("%s: %w", name, err)
		})
	}
	start("datapath", dp.Run)
	start("clustermesh", mesh.Run)
	start("status server", func(ctx context.Context) error { return srv.serve(ctx, ln) })
	log.WithField("statusListen", ln.Addr().String()).Info("podmesh-agent running")
	err = g.Wait()
	log.Info("podmesh-agent stopped; kernel state left in place")
	return err
}
