package lab

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/test/kubetest"
)

// ClusterSpec describes a cluster to add. Zero fields take the addressing
// plan's defaults for Index.
type ClusterSpec struct {
	Index    int
	Name     string
	ID       uint32
	PodCIDRs []netip.Prefix
}

// ServiceCIDR6 is the IPv6 service range of a dual-stack cluster (next to
// kubetest's IPv4 10.96.0.0/16).
var ServiceCIDR6 = netip.MustParsePrefix("fd00:96::/112")

// AddCluster creates cluster spec.Index: its control-plane namespace on the
// underlay, its CA, and its control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) inside that namespace. Nodes
// join with AddKubeNode; InstallPodmesh installs podmesh.
func (l *Lab) AddCluster(ctx context.Context, spec ClusterSpec) (c *Cluster, err error) {
	i := spec.Index
	if i < 1 || i > MaxClusters {
		return nil, fmt.Errorf("cluster index %d: want 1..%d", i, MaxClusters)
	}
	if spec.Name == "" {
		spec.Name = ClusterName(i)
	}
	if spec.ID == 0 {
		spec.ID = uint32(i)
	}
	if len(spec.PodCIDRs) == 0 {
		spec.PodCIDRs = []netip.Prefix{ClusterPodCIDR(i)}
		if l.opts.DualStack {
			spec.PodCIDRs = append(spec.PodCIDRs, ClusterPodCIDR6(i))
		}
	}
	c = &Cluster{
		lab:       l,
		Index:     i,
		Name:      spec.Name,
		ID:        spec.ID,
		PodCIDRs:  spec.PodCIDRs,
		NetNS:     l.Names.ControlPlane(i),
		IP:        ControlPlaneIP(i),
		dir:       filepath.Join(l.StateDir, ClusterName(i)),
		Nodes:     make(map[int]*Node),
		peerCerts: make(map[string]*certs.KeyPair),
	}
	l.mu.Lock()
	if _, ok := l.clusters[i]; ok {
		l.mu.Unlock()
		return nil, fmt.Errorf("cluster index %d exists", i)
	}
	l.clusters[i] = c
	l.mu.Unlock()

	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	if err := addNetNS(ctx, c.NetNS); err != nil {
		return nil, err
	}
	if err := l.addUnderlayLink(ctx, fmt.Sprintf("c%dcp", i), c.NetNS, c.IP, 1, i, 0); err != nil {
		return nil, err
	}
	if c.CA, err = certs.NewCA(certs.Options{CommonName: "podmesh-" + c.Name + "-ca"}); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	var extra []string
	if l.opts.DualStack {
		extra = append(extra, "--service-cluster-ip-range=10.96.0.0/16,"+ServiceCIDR6.String())
	}
	l.progress("cluster %s: starting its control plane in %s (%s:%d)", c.Name, c.NetNS, c.IP, KubePort)
	t0 := time.Now()
	kube, err := kubetest.StartServer(ctx, kubetest.Options{
		Dir:                filepath.Join(c.dir, "kube"),
		BindAddress:        c.IP,
		Port:               KubePort,
		EtcdPort:           KubeEtcdPort,
		NetNSPath:          NetNSPath(c.NetNS),
		BinDir:             l.toolsDir(),
		ControlPlane:       true,
		ExtraAPIServerArgs: extra,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	c.Kube = kube
	l.progress("cluster %s: control plane ready in %.1fs", c.Name, time.Since(t0).Seconds())
	return c, nil
}

// KubeServer is the cluster's control plane.
func (c *Cluster) KubeServer() *kubetest.Server { return c.Kube }

// PeerCert returns the client certificate with CN remote-<peer> that the
// cluster's CA issued (made on first use).
func (c *Cluster) PeerCert(peer string) (*certs.KeyPair, error) {
	cn := certs.PeerCN(peer)
	c.lab.mu.Lock()
	defer c.lab.mu.Unlock()
	if kp, ok := c.peerCerts[cn]; ok {
		return kp, nil
	}
	kp, err := c.CA.IssueClient(certs.Options{CommonName: cn})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: peer cert for %s: %w", c.Name, peer, err)
	}
	c.peerCerts[cn] = kp
	return kp, nil
}

// MeshEndpoints are the https URLs peers reach the cluster's
// clustermesh-apiserver at: its NodePort on every node, as
// docs/install.md tells users.
func (c *Cluster) MeshEndpoints() []string {
	var eps []string
	for _, n := range c.NodeList() {
		eps = append(eps, certs.ProxyEndpoint(n.IP.String(), APIServerNodePort))
	}
	return eps
}

// HTTPClientIn returns an HTTP client whose connections start in netns.
func HTTPClientIn(netns string) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext:       kubetest.DialInNetNS(NetNSPath(netns)),
			DisableKeepAlives: true,
		},
	}
}

// toolsDir is where the Kubernetes tools come from: the lab's bin
// directory when it holds them (the CLI's --bin-dir), else kubetest's own
// choice ($PODMESH_BIN or bin/).
func (l *Lab) toolsDir() string {
	if _, err := os.Stat(l.Bin("kube-apiserver")); err == nil {
		return l.opts.BinDir
	}
	return ""
}
