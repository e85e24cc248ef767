package importer

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/podmesh/podmesh/clustermesh-apiserver/cache"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
	"github.com/podmesh/podmesh/pkg/mcscrd"
	"github.com/podmesh/podmesh/pkg/meshapi"
	"github.com/podmesh/podmesh/test/kubetest"
)

// waitFor is the guard on every wait: a deadline against a hang, never a
// timing assertion.
const waitFor = 60 * time.Second

// installMCSCRDs installs the ServiceExport and ServiceImport CRDs from
// mcs-api's embedded YAML, as the daemonset ships them.
func installMCSCRDs(t testing.TB, cfg *rest.Config) {
	t.Helper()
	require.NoError(t, mcscrd.Install(context.Background(), cfg))
}

// kube is a test apiserver with the MCS CRDs.
type kube struct {
	*kubetest.Server
	mcs mcsclient.Interface
}

func startKube(t testing.TB) *kube {
	t.Helper()
	if testing.Short() {
		t.Skip("needs bin/kube-apiserver and bin/etcd (make tools); skipped in -short mode")
	}
	s := kubetest.Start(t)
	installMCSCRDs(t, s.Config)
	mcs, err := mcsclient.NewForConfig(s.Config)
	require.NoError(t, err)
	return &kube{Server: s, mcs: mcs}
}

func (k *kube) namespace(t testing.TB, name string) {
	t.Helper()
	_, err := k.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// fakeCluster is a cluster's published state in a real etcd, reached through
// a forwarder that can be cut, with the config file a peer mounts.
type fakeCluster struct {
	name string
	id   uint32
	cidr netip.Prefix
	etcd *kvstoretest.Etcd
	fwd  *kvstoretest.Forwarder
	// file is the etcd-client YAML (written into a config dir by mount).
	yaml []byte
	dir  string

	exportsCapability bool
}

func newFakeCluster(t testing.TB, name string, id uint32, cidr string, exportsCapability bool) *fakeCluster {
	t.Helper()
	e := kvstoretest.StartEtcd(t, name)
	fwd := kvstoretest.StartForwarder(t, e.Addr)
	dir := t.TempDir()
	files := e.WriteClientFiles(t, dir, name, "remote-east")
	c := &fakeCluster{name: name, id: id, cidr: netip.MustParsePrefix(cidr), etcd: e, fwd: fwd, dir: dir, exportsCapability: exportsCapability,
		yaml: kvstoretest.ClientYAML("https://"+fwd.Addr, e.CAFile, files.CertFile, files.KeyFile)}
	c.publishMeta(t)
	return c
}

// publishMeta writes what a cluster's apiserver writes before any service:
// its config, heartbeat and sync canaries.
func (c *fakeCluster) publishMeta(t testing.TB) {
	t.Helper()
	cc := meshapi.ClusterConfig{Name: c.name, ID: c.id, PodCIDRs: []netip.Prefix{c.cidr}, ServiceCIDRs: []netip.Prefix{},
		Capabilities: meshapi.Capabilities{Endpoints: true, Services: true, ServiceExports: c.exportsCapability}, FormatVersion: meshapi.FormatVersion}
	c.put(t, meshapi.ClusterConfigKey(c.name), cc)
	c.etcd.Put(t, meshapi.HeartbeatKey(c.name), meshapi.FormatTime(time.Now()))
	for _, k := range meshapi.SyncedKinds {
		c.etcd.Put(t, meshapi.SyncedKey(c.name, k), meshapi.FormatTime(time.Now()))
	}
}

// rebuild replaces the cluster's etcd by an empty one behind the same
// address, as a replaced clustermesh-apiserver pod with an emptyDir does,
// and publishes the cluster's meta keys there; connections to the old one
// are cut.
func (c *fakeCluster) rebuild(t testing.TB) {
	t.Helper()
	c.etcd = c.etcd.Rebuilt(t)
	c.publishMeta(t)
}

func (c *fakeCluster) put(t testing.TB, key string, v any) {
	t.Helper()
	b, err := meshapi.Encode(v)
	require.NoError(t, err)
	c.etcd.Put(t, key, string(b))
}

// export publishes a format-2 service of this cluster.
func (c *fakeCluster) export(t testing.TB, s meshapi.Service) {
	t.Helper()
	if s.Cluster == "" {
		s.Cluster, s.ClusterID = c.name, c.id
	}
	if s.Endpoints == nil {
		s.Endpoints = []meshapi.ServiceEndpoint{}
	}
	c.put(t, meshapi.ServiceKey(c.name, s.Namespace, s.Name), s)
}

func (c *fakeCluster) unexport(t testing.TB, namespace, name string) {
	t.Helper()
	c.etcd.Delete(t, meshapi.ServiceKey(c.name, namespace, name), false)
}

// configDir is a directory of remote-cluster files.
type configDir string

func newConfigDir(t testing.TB, clusters ...*fakeCluster) configDir {
	d := configDir(t.TempDir())
	for _, c := range clusters {
		d.mount(t, c)
	}
	return d
}

func (d configDir) mount(t testing.TB, c *fakeCluster) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(string(d), c.name), c.yaml, 0o600))
}

func (d configDir) unmount(t testing.TB, c *fakeCluster) {
	t.Helper()
	require.NoError(t, os.Remove(filepath.Join(string(d), c.name)))
}

// fastTiming makes sessions notice a cut quickly (the deadlines are guards).
var fastTiming = Timing{Timing: clustermesh.Timing{ProbeInterval: 200 * time.Millisecond, ProbeTimeout: time.Second, DialTimeout: time.Second, BackoffMin: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond}}

// westAndSouth starts the two remotes most tests use and creates the
// namespace ns locally.
func westAndSouth(t testing.TB, k *kube, ns string) (west, south *fakeCluster) {
	t.Helper()
	k.namespace(t, ns)
	return newFakeCluster(t, "west", 2, "10.2.0.0/16", true), newFakeCluster(t, "south", 3, "10.3.0.0/16", true)
}

// runImporter starts an importer for the local cluster "east" (10.1.0.0/16)
// and stops it when the returned function is called or the test ends.
func runImporter(t testing.TB, k *kube, dir configDir, mutate func(*Options)) (*Importer, func()) {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	opts := Options{
		LocalCluster: "east", LocalClusterID: 1, LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
		ConfigDir: string(dir), Kube: k.Client, MCS: k.mcs, Timing: fastTiming, Log: log,
	}
	if mutate != nil {
		mutate(&opts)
	}
	imp, err := New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- imp.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
	}
	t.Cleanup(stop)
	return imp, stop
}

// slicesOf returns the imported slices of namespace/name from cluster, by
// their labels.
func (k *kube) slicesOf(t testing.TB, namespace, name, cluster string) []discoveryv1.EndpointSlice {
	t.Helper()
	sel := fmt.Sprintf("%s=%s,%s=%s", LabelMCSServiceName, name, LabelSourceCluster, cluster)
	l, err := k.Client.DiscoveryV1().EndpointSlices(namespace).List(context.Background(), metav1.ListOptions{LabelSelector: sel})
	require.NoError(t, err)
	return l.Items
}

// addrsOf lists every address in slices with its ready condition.
func addrsOf(ss []discoveryv1.EndpointSlice) map[string]bool {
	out := map[string]bool{}
	for _, s := range ss {
		for _, ep := range s.Endpoints {
			for _, a := range ep.Addresses {
				out[a] = ep.Conditions.Ready != nil && *ep.Conditions.Ready
			}
		}
	}
	return out
}

func ep(ip, hostname string) meshapi.ServiceEndpoint {
	return meshapi.ServiceEndpoint{IP: netip.MustParseAddr(ip), Hostname: hostname, Node: "node-1", Ready: true, Serving: true, Zone: "zone-a"}
}

// clusterStatus is the importer's status of one cluster (zero if unknown).
func clusterStatus(imp *Importer, name string) ClusterStatus {
	for _, c := range imp.Status().Clusters {
		if c.Cluster == name {
			return c
		}
	}
	return ClusterStatus{}
}

// runFunc starts an importer for the local cluster "east" (runImporter's
// options) and returns it with its stop function.
type runFunc func(t testing.TB, k *kube, dir configDir, mutate func(*Options)) (*Importer, func())

// forEachWayToReadRemotes runs body with the importer dialling the remotes
// itself (no cache) and with the importer reading them through a cache
// tier's sessions (Options.Feed), as clustermesh-apiserver runs it by
// default: the failure semantics must be the same.
func forEachWayToReadRemotes(t *testing.T, body func(t *testing.T, run runFunc)) {
	t.Run("direct", func(t *testing.T) { body(t, runImporter) })
	t.Run("through the cache", func(t *testing.T) { body(t, runImporterThroughCache) })
}

// runImporterThroughCache runs a cache tier (package cache, with its own
// embedded etcd) on dir and an importer that reads the remotes from it.
func runImporterThroughCache(t testing.TB, k *kube, dir configDir, mutate func(*Options)) (*Importer, func()) {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e := proxytest.StartEtcd(t)
	feed := NewFeed()
	c, err := cache.New(cache.Options{
		Cluster: "east", ClusterID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
		ConfigDir: string(dir), Etcd: e.Writer, Services: feed, Timing: fastTiming.Timing, Log: log,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cacheDone := make(chan error, 1)
	go func() { cacheDone <- c.Run(ctx) }()
	imp, stopImporter := runImporter(t, k, dir, func(o *Options) {
		o.Feed, o.Cache = feed, c
		if mutate != nil {
			mutate(o)
		}
	})
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		stopImporter()
		cancel()
		require.NoError(t, <-cacheDone)
	}
	t.Cleanup(stop)
	return imp, stop
}
