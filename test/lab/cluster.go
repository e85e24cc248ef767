package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	// KubeFrom, when set, makes the cluster use that cluster's API server
	// instead of starting its own: its clustermesh-apiserver then publishes
	// the other cluster's nodes and pods under its own name. Misconfiguration
	// drills use it to make a cluster that, say, overlaps another, without
	// the cost of one more kube-apiserver.
	KubeFrom *Cluster
	// NoKube starts no API server at all (tests of the scaffolding).
	NoKube bool
}

// AddCluster creates cluster spec.Index: its control-plane namespace on the
// underlay, its CA and proxy serving certificate, and (unless KubeFrom) a
// real etcd + kube-apiserver inside that namespace. It does not start the
// clustermesh-apiserver (StartMesh).
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
	c.kubeOwner = c
	if spec.KubeFrom != nil {
		c.kubeOwner = spec.KubeFrom
	}
	l.mu.Lock()
	if _, ok := l.clusters[i]; ok {
		l.mu.Unlock()
		return nil, fmt.Errorf("cluster index %d exists", i)
	}
	l.clusters[i] = c
	l.mu.Unlock()

	if err := os.MkdirAll(filepath.Join(c.dir, "mesh"), 0o755); err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	if err := addNetNS(ctx, c.NetNS); err != nil {
		return nil, err
	}
	if err := l.addUnderlayLink(ctx, fmt.Sprintf("c%dcp", i), c.NetNS, c.IP, 1, i, 0); err != nil {
		return nil, err
	}
	if err := c.makeCerts(); err != nil {
		return nil, err
	}
	if spec.KubeFrom == nil && !spec.NoKube {
		l.progress("cluster %s: starting etcd + kube-apiserver in %s (%s:%d)", c.Name, c.NetNS, c.IP, KubePort)
		t0 := time.Now()
		kube, err := kubetest.StartServer(ctx, kubetest.Options{
			Dir:         filepath.Join(c.dir, "kube"),
			BindAddress: c.IP,
			Port:        KubePort,
			EtcdPort:    KubeEtcdPort,
			NetNSPath:   NetNSPath(c.NetNS),
			BinDir:      l.toolsDir(),
			// Real nodes need the whole control plane.
			ControlPlane: l.opts.Kubelets,
		})
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		c.Kube = kube
		l.progress("cluster %s: kube-apiserver ready in %.1fs", c.Name, time.Since(t0).Seconds())
	}
	return c, nil
}

// KubeServer is the API server this cluster's components use, or nil.
func (c *Cluster) KubeServer() *kubetest.Server { return c.kubeOwner.Kube }

// ownsKube reports whether the cluster runs its own API server (and so the
// lab registers Node and Pod objects in it).
func (c *Cluster) ownsKube() bool { return c.Kube != nil }

// makeCerts creates the cluster's CA and its proxy's serving certificate
// (the control-plane IP as SAN) and writes them for the clustermesh-apiserver.
func (c *Cluster) makeCerts() error {
	ca, err := certs.NewCA(certs.Options{CommonName: "podmesh-" + c.Name + "-ca"})
	if err != nil {
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	server, err := ca.IssueServer(certs.Options{
		CommonName:  "clustermesh-apiserver." + c.Name,
		DNSNames:    []string{"clustermesh-apiserver", "clustermesh-apiserver." + c.Name + ".lab"},
		IPAddresses: []net.IP{net.IP(c.IP.AsSlice())},
	})
	if err != nil {
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	c.CA, c.server = ca, server
	dir := filepath.Join(c.dir, "mesh")
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return fmt.Errorf("write CA: %w", err)
	}
	return server.WriteFiles(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), true)
}

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

// MeshEndpoint is the https URL of the cluster's clustermesh-apiserver.
func (c *Cluster) MeshEndpoint() string {
	return "https://" + net.JoinHostPort(c.IP.String(), itoa(MeshPort))
}

// MeshHealthURL is the base URL of its health endpoints.
func (c *Cluster) MeshHealthURL() string {
	return "http://" + net.JoinHostPort(c.IP.String(), itoa(MeshHealthPort))
}

// StartMesh starts the cluster's clustermesh-apiserver in its control-plane
// namespace and waits until /readyz answers 200. allowedPeers are the
// cluster names whose CN remote-<name> the proxy accepts; nil allows every
// other cluster of the lab at this moment.
func (l *Lab) StartMesh(ctx context.Context, c *Cluster, allowedPeers []string) error {
	if c.Mesh != nil {
		if exited, _ := c.Mesh.Exited(); !exited {
			return fmt.Errorf("cluster %s: clustermesh-apiserver already runs", c.Name)
		}
	}
	if allowedPeers == nil {
		for _, o := range l.Clusters() {
			if o != c {
				allowedPeers = append(allowedPeers, o.Name)
			}
		}
	}
	cns := make([]string, len(allowedPeers))
	for k, p := range allowedPeers {
		cns[k] = certs.PeerCN(p)
	}
	c.AllowedPeers = slices.Clone(allowedPeers)
	dir := filepath.Join(c.dir, "mesh")
	p, err := startProc(l.log, "clustermesh-apiserver-"+c.Name, c.NetNS, l.logPath("clustermesh-apiserver-"+c.Name), nil,
		l.Bin("clustermesh-apiserver"),
		"--cluster-name="+c.Name,
		"--cluster-id="+itoa(int(c.ID)),
		"--pod-cidrs="+joinPrefixes(c.PodCIDRs),
		"--kubeconfig="+c.KubeServer().Kubeconfig,
		"--listen="+net.JoinHostPort(c.IP.String(), itoa(MeshPort)),
		"--tls-cert="+filepath.Join(dir, "server.crt"),
		"--tls-key="+filepath.Join(dir, "server.key"),
		"--tls-client-ca="+filepath.Join(dir, "ca.crt"),
		"--allowed-peers="+strings.Join(cns, ","),
		"--data-dir="+filepath.Join(dir, "data"),
		"--health-listen="+net.JoinHostPort(c.IP.String(), itoa(MeshHealthPort)),
	)
	if err != nil {
		return err
	}
	c.Mesh = p
	l.progress("cluster %s: clustermesh-apiserver started (%s), waiting for /readyz", c.Name, c.MeshEndpoint())
	return l.WaitMeshReady(ctx, c, 2*time.Minute)
}

// WaitMeshReady waits until the clustermesh-apiserver's /readyz is 200.
func (l *Lab) WaitMeshReady(ctx context.Context, c *Cluster, timeout time.Duration) error {
	hc := HTTPClientIn(c.NetNS)
	return waitFor(ctx, timeout, 100*time.Millisecond, "clustermesh-apiserver "+c.Name+" ready", func() (bool, error) {
		if exited, err := c.Mesh.Exited(); exited {
			return false, permanent{fmt.Errorf("clustermesh-apiserver %s exited: %v; log tail:\n%s", c.Name, err, TailLog(c.Mesh.LogPath, 20))}
		}
		resp, err := hc.Get(c.MeshHealthURL() + "/readyz")
		if err != nil {
			return false, err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("readyz %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return true, nil
	})
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

// StopMesh stops the cluster's clustermesh-apiserver gracefully.
func (l *Lab) StopMesh(c *Cluster) error { return c.Mesh.Stop(10 * time.Second) }

// KillMesh kills the cluster's clustermesh-apiserver (SIGKILL: a crash).
func (l *Lab) KillMesh(c *Cluster) error { return c.Mesh.Kill() }

// RemoveCluster stops the cluster's clustermesh-apiserver and API server,
// removes its nodes and its control-plane namespace. Nodes of other
// clusters keep whatever mesh config they have.
func (l *Lab) RemoveCluster(ctx context.Context, c *Cluster) error {
	var errs []error
	for _, n := range c.NodeList() {
		errs = append(errs, l.RemoveNode(ctx, n))
	}
	errs = append(errs, c.Mesh.Stop(10*time.Second))
	if c.Kube != nil {
		errs = append(errs, c.Kube.Stop())
	}
	errs = append(errs, ipBatch(ctx, l.Names.Underlay(), fmt.Sprintf("link del c%dcp", c.Index)))
	errs = append(errs, delNetNS(c.NetNS))
	l.mu.Lock()
	delete(l.clusters, c.Index)
	l.mu.Unlock()
	return errors.Join(errs...)
}

// toolsDir is where kube-apiserver and etcd come from: the lab's bin
// directory when it holds them (the CLI's --bin-dir), else kubetest's own
// choice ($PODMESH_BIN or bin/).
func (l *Lab) toolsDir() string {
	if _, err := os.Stat(l.Bin("kube-apiserver")); err == nil {
		return l.opts.BinDir
	}
	return ""
}
