package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/podmesh/podmesh/clustermesh-apiserver/cache"
	"github.com/podmesh/podmesh/clustermesh-apiserver/etcdserver"
	"github.com/podmesh/podmesh/clustermesh-apiserver/importer"
	"github.com/podmesh/podmesh/clustermesh-apiserver/kubesync"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Server is one clustermesh-apiserver.
type Server struct {
	cfg           Config
	log           logrus.FieldLogger
	tls           *tls.Config
	kube          kubernetes.Interface
	mcs           mcsclient.Interface
	syncMetrics   *kubesync.Metrics
	importMetrics *importer.Metrics
	proxyMetrics  *proxy.Metrics

	started chan struct{}
	ready   chan struct{}
	// mu protects the fields below, set while starting.
	mu         sync.Mutex
	etcd       *etcdserver.Server
	importer   *importer.Importer
	cache      *cache.Cache
	cacheAddr  string
	proxyAddr  string
	healthAddr string
}

// New loads the certificates and the Kubernetes client configuration; it
// listens on nothing yet. restConfig, when not nil, is used instead of
// cfg.Kubeconfig (tests).
func New(cfg Config, restConfig *rest.Config, log logrus.FieldLogger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tlsCfg, err := proxy.ReloadingServerTLS(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA, cfg.AllowedPeers, log)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(cfg.TLSKey); err == nil && fi.Mode().Perm()&0o077 != 0 {
		// Not fatal: a Secret volume's default mode is 0644.
		log.WithFields(logrus.Fields{"file": cfg.TLSKey, "mode": fi.Mode().Perm().String()}).Warn("TLS key is readable by group or others; 0600 expected")
	}
	if restConfig == nil {
		if restConfig, err = loadKubeconfig(cfg.Kubeconfig); err != nil {
			return nil, err
		}
	}
	restConfig = rest.CopyConfig(restConfig)
	restConfig.UserAgent = "clustermesh-apiserver"
	if restConfig.QPS == 0 {
		restConfig.QPS, restConfig.Burst = 50, 100
	}
	kube, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	mcs, err := mcsclient.NewForConfig(restConfig)
	if err != nil {
		return nil, fmt.Errorf("create Multi-Cluster Services client: %w", err)
	}
	return &Server{
		mcs:           mcs,
		importMetrics: importer.NewMetrics(),
		cfg:           cfg,
		log:           log.WithField("cluster", cfg.ClusterName),
		tls:           tlsCfg,
		kube:          kube,
		syncMetrics:   kubesync.NewMetrics(),
		proxyMetrics:  proxy.NewMetrics(),
		started:       make(chan struct{}),
		ready:         make(chan struct{}),
	}, nil
}

func loadKubeconfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes configuration (set --kubeconfig outside a cluster): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load --kubeconfig %s: %w", path, err)
	}
	return c, nil
}

// Collectors returns the server's metrics for the caller to register.
func (s *Server) Collectors() []prometheus.Collector {
	out := append(s.syncMetrics.Collectors(), s.proxyMetrics.Collectors()...)
	if s.cfg.ClusterMeshConfig != "" {
		out = append(out, s.importMetrics.Collectors()...)
	}
	return out
}

// SyncMetrics exposes the sync's metrics (tests and benchmarks read them).
func (s *Server) SyncMetrics() *kubesync.Metrics { return s.syncMetrics }

// ImportMetrics exposes the service importer's metrics.
func (s *Server) ImportMetrics() *importer.Metrics { return s.importMetrics }

// Importer is the service importer (after Started), nil without
// --clustermesh-config.
func (s *Server) Importer() *importer.Importer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.importer
}

// ProxyMetrics exposes the proxy's metrics.
func (s *Server) ProxyMetrics() *proxy.Metrics { return s.proxyMetrics }

// Started is closed once etcd, the proxy and the health endpoint listen.
func (s *Server) Started() <-chan struct{} { return s.started }

// Ready is closed once every sync canary is written.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// ProxyAddr is the proxy's listening address (after Started).
func (s *Server) ProxyAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proxyAddr
}

// CacheAddr is the cache proxy's listening address (after Started), empty
// when the cache does not run.
func (s *Server) CacheAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cacheAddr
}

// Cache is the cache tier (after Started), nil when it does not run.
func (s *Server) Cache() *cache.Cache {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache
}

// HealthAddr is the health endpoint's listening address (after Started).
func (s *Server) HealthAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthAddr
}

// Etcd is the embedded etcd (after Started).
func (s *Server) Etcd() *etcdserver.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd
}

// Run starts everything and serves until ctx is done, then shuts down in
// order. gatherer feeds /metrics.
func (s *Server) Run(ctx context.Context, gatherer prometheus.Gatherer) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	healthLis, err := net.Listen("tcp", s.cfg.HealthListen)
	if err != nil {
		return fmt.Errorf("listen on --health-listen %s: %w", s.cfg.HealthListen, err)
	}
	proxyLis, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		healthLis.Close()
		return fmt.Errorf("listen on --listen %s: %w", s.cfg.Listen, err)
	}
	health := &http.Server{Handler: s.healthMux(gatherer), ReadHeaderTimeout: 10 * time.Second}
	healthErr := make(chan error, 1)
	go func() { healthErr <- health.Serve(healthLis) }()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if herr := health.Shutdown(sctx); herr != nil {
			err = errors.Join(err, fmt.Errorf("stop health endpoint: %w", herr))
		}
	}()

	e, err := etcdserver.Start(ctx, etcdserver.Config{
		DataDir:       s.cfg.DataDir,
		ListenClient:  s.cfg.EtcdListenClient,
		UnsafeNoFsync: s.cfg.UnsafeNoFsync,
		Log:           s.log,
	})
	if err != nil {
		proxyLis.Close()
		return err
	}
	defer func() {
		if cerr := e.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		s.log.Info("Embedded etcd stopped")
	}()

	cluster := kubesync.Cluster{Name: s.cfg.ClusterName, ID: s.cfg.ClusterID, PodCIDRs: s.cfg.PodCIDRs}
	if s.cfg.Namespace != "" {
		ectx, ecancel := context.WithTimeout(ctx, 30*time.Second)
		cluster.Established, err = established(ectx, s.kube, s.cfg.Namespace, s.cfg.ClusterName, s.cfg.ClusterID)
		ecancel()
		if err != nil {
			// Conflicts then rank this cluster by its ID alone; say so.
			s.log.WithError(err).Warn("Cannot record when this cluster joined the mesh; its cluster-config carries no established time")
		}
	}
	syncer, err := kubesync.New(kubesync.Config{
		Cluster:       cluster,
		Kube:          s.kube,
		MCS:           s.mcs,
		Etcd:          e.Writer,
		Workers:       s.cfg.SyncWorkers,
		CoalesceDelay: s.cfg.CoalesceDelay,
		Metrics:       s.syncMetrics,
		Log:           s.log,
	})
	if err != nil {
		proxyLis.Close()
		return err
	}
	syncCtx, stopSync := context.WithCancel(ctx)
	syncErr := make(chan error, 1)
	syncDone := false
	go func() { syncErr <- syncer.Run(syncCtx) }()
	defer func() {
		stopSync()
		if !syncDone {
			if serr := <-syncErr; serr != nil {
				err = errors.Join(err, serr)
			}
		}
		s.log.Info("Kubernetes sync stopped")
	}()
	go func() {
		select {
		case <-syncer.Ready():
			close(s.ready)
		case <-ctx.Done():
		}
	}()

	p, err := proxy.Start(ctx, proxy.Config{Listener: proxyLis, TLS: s.tls, Client: e.Reader, DenyPrefixes: []string{meshapi.CacheRoot}, Metrics: s.proxyMetrics, Log: s.log})
	if err != nil {
		proxyLis.Close()
		return err
	}
	defer func() {
		p.Stop()
		s.log.Info("Proxy stopped")
	}()

	var c *cache.Cache
	var cacheProxy *proxy.Proxy
	var feed *importer.Feed
	cacheErr := make(chan error, 1)
	if s.cfg.CacheEnabled() {
		// The importer reads the remotes' services from the cache's
		// sessions: one connection per remote serves both.
		feed = importer.NewFeed()
		cacheCtx, stopCache := context.WithCancel(ctx)
		cacheDone := make(chan struct{})
		if c, cacheProxy, err = s.startCache(cacheCtx, e, feed, cacheErr, cacheDone); err != nil {
			stopCache()
			return err
		}
		defer func() {
			cacheProxy.Stop()
			stopCache()
			<-cacheDone
			s.log.Info("Cache stopped")
		}()
	}

	var imp *importer.Importer
	importErr := make(chan error, 1)
	if s.cfg.ClusterMeshConfig != "" {
		opts := importer.Options{
			LocalCluster: s.cfg.ClusterName, LocalClusterID: s.cfg.ClusterID, LocalPodCIDRs: s.cfg.PodCIDRs,
			ConfigDir: s.cfg.ClusterMeshConfig, Local: e.Reader, Kube: s.kube, MCS: s.mcs,
			Metrics: s.importMetrics, Log: s.log,
		}
		if c != nil {
			opts.Feed, opts.Cache = feed, c
		}
		if s.cfg.LeaderElectionNamespace != "" {
			opts.LeaderElection = &importer.LeaderElection{Namespace: s.cfg.LeaderElectionNamespace, Name: "podmesh-service-importer", Identity: s.cfg.LeaderElectionID}
		}
		if imp, err = importer.New(opts); err != nil {
			return err
		}
		importCtx, stopImport := context.WithCancel(ctx)
		importDone := make(chan struct{})
		go func() {
			defer close(importDone)
			if err := imp.Run(importCtx); err != nil && importCtx.Err() == nil {
				importErr <- err
			}
		}()
		defer func() {
			stopImport()
			<-importDone
			s.log.Info("Service importer stopped")
		}()
	}

	s.mu.Lock()
	s.etcd, s.importer, s.proxyAddr, s.healthAddr = e, imp, p.Addr(), healthLis.Addr().String()
	s.cache = c
	if cacheProxy != nil {
		s.cacheAddr = cacheProxy.Addr()
	}
	s.mu.Unlock()
	close(s.started)
	s.log.WithFields(logrus.Fields{"proxy": p.Addr(), "health": healthLis.Addr().String()}).Info("clustermesh-apiserver started")

	select {
	case <-ctx.Done():
		s.log.Info("Shutting down")
		return nil
	case err := <-e.Err():
		return fmt.Errorf("embedded etcd failed: %w", err)
	case err := <-syncErr:
		syncDone = true
		return fmt.Errorf("kubernetes sync stopped: %w", err)
	case err := <-p.Err():
		return err
	case err := <-healthErr:
		return fmt.Errorf("health endpoint stopped: %w", err)
	case err := <-importErr:
		return fmt.Errorf("service importer stopped: %w", err)
	case err := <-cacheErr:
		return fmt.Errorf("cache stopped: %w", err)
	}
}

// startCache runs the cache tier (its mirror of the remotes in ctx, until
// ctx is done, failures to errc; the remotes' services to services) and its proxy for this cluster's agents:
// its own listener, TLS that accepts only the local agents' CNs, and an etcd
// user that may read the cache prefix only.
func (s *Server) startCache(ctx context.Context, e *etcdserver.Server, services clustermesh.ServiceSink, errc chan<- error, done chan<- struct{}) (*cache.Cache, *proxy.Proxy, error) {
	c, err := cache.New(cache.Options{
		Cluster: s.cfg.ClusterName, ClusterID: s.cfg.ClusterID, PodCIDRs: s.cfg.PodCIDRs,
		ConfigDir: s.cfg.ClusterMeshConfig, Etcd: e.Writer, SyncTimeout: s.cfg.CacheSyncTimeout, Log: s.log,
		Services: services,
	})
	if err != nil {
		return nil, nil, err
	}
	tlsCfg, err := proxy.ReloadingServerTLS(s.cfg.TLSCert, s.cfg.TLSKey, s.cfg.TLSClientCA, s.cfg.CacheAllowedClients, s.log)
	if err != nil {
		return nil, nil, err
	}
	p, err := proxy.Start(ctx, proxy.Config{Listen: s.cfg.CacheListen, TLS: tlsCfg, Client: e.CacheReader, Metrics: s.proxyMetrics, Log: s.log.WithField("proxy", "cache")})
	if err != nil {
		return nil, nil, err
	}
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil && ctx.Err() == nil {
			errc <- err
		}
	}()
	return c, p, nil
}

func (s *Server) healthMux(gatherer prometheus.Gatherer) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-s.ready:
			fmt.Fprintln(w, "ok")
		default:
			http.Error(w, "not ready: sync canaries not written yet", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/status/cache", func(w http.ResponseWriter, _ *http.Request) {
		c := s.Cache()
		if c == nil {
			http.Error(w, "the cache does not run (no --clustermesh-config or --cache-listen) or has not started", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(c.Status())
	})
	mux.HandleFunc("/status/imports", func(w http.ResponseWriter, _ *http.Request) {
		imp := s.Importer()
		if imp == nil {
			http.Error(w, "service import is off (no --clustermesh-config) or not started", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(imp.Status())
	})
	if gatherer != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	}
	return mux
}
