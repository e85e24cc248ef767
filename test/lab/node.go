package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/podmesh/podmesh/certs"
)

// AddNode creates node j of cluster c: its namespace with an underlay link
// and ip_forward on, and its Node object (pod CIDR, InternalIP). It does not
// start the agent (StartAgent) nor write its mesh config (WriteMeshConfig).
func (l *Lab) AddNode(ctx context.Context, c *Cluster, j int) (*Node, error) {
	n, err := l.newNode(c, j)
	if err != nil {
		return nil, err
	}
	if l.opts.DualStack {
		n.PodCIDR6 = NodePodCIDR6(c.Index, j)
	}
	n.ConfigDir = filepath.Join(l.StateDir, "nodes", n.Name, "clustermesh")
	n.BPFRoot = filepath.Join(l.bpfBase, n.NetNS)
	n.LogPath = l.logPath("agent-" + n.Name)
	l.mu.Lock()
	if _, ok := c.Nodes[j]; ok {
		l.mu.Unlock()
		return nil, fmt.Errorf("node %s exists", n.Name)
	}
	c.Nodes[j] = n
	l.mu.Unlock()

	if err := l.plumbNode(ctx, n); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(n.ConfigDir, 0o755); err != nil {
		return nil, fmt.Errorf("create config dir: %w", err)
	}
	if kube := c.KubeServer(); c.ownsKube() {
		if err := registerNode(ctx, kube.Client, n.Name, n.IP, n.PodCIDRs()); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// newNode is node j of cluster c with the addressing plan's names and
// addresses (not yet in the cluster).
func (l *Lab) newNode(c *Cluster, j int) (*Node, error) {
	if j < 1 || j > MaxNodes {
		return nil, fmt.Errorf("node index %d: want 1..%d", j, MaxNodes)
	}
	i := c.Index
	return &Node{
		Cluster: c,
		Index:   j,
		Name:    NodeName(i, j),
		NetNS:   l.Names.Node(i, j),
		IP:      NodeIP(i, j),
		PodCIDR: NodePodCIDR(i, j),
		Pods:    make(map[int]*Pod),
		Mode:    l.opts.RoutingMode,
	}, nil
}

// plumbNode creates the node's namespace, its underlay link and turns
// forwarding on (a fresh namespace has ip_forward 0).
func (l *Lab) plumbNode(ctx context.Context, n *Node) error {
	i, j := n.Cluster.Index, n.Index
	if err := addNetNS(ctx, n.NetNS); err != nil {
		return err
	}
	if err := l.addUnderlayLink(ctx, fmt.Sprintf("c%dn%d", i, j), n.NetNS, n.IP, 2, i, j); err != nil {
		return err
	}
	if err := setSysctl(n.NetNS, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if n.PodCIDR6.IsValid() {
		return setSysctl(n.NetNS, "net.ipv6.conf.all.forwarding", "1")
	}
	return nil
}

// PodCIDRs are the node's pod CIDRs: IPv4, then IPv6 in a dual-stack lab.
func (n *Node) PodCIDRs() []netip.Prefix {
	if n.PodCIDR6.IsValid() {
		return []netip.Prefix{n.PodCIDR, n.PodCIDR6}
	}
	return []netip.Prefix{n.PodCIDR}
}

// unplumbNode deletes the node's underlay veth (synchronously: the kernel
// destroys a deleted namespace's links only later, and the same names are
// about to be reused) and then its namespace.
func (l *Lab) unplumbNode(ctx context.Context, n *Node) error {
	err := ipBatch(ctx, l.Names.Underlay(), fmt.Sprintf("link del c%dn%d", n.Cluster.Index, n.Index))
	return errors.Join(err, delNetNS(n.NetNS))
}

// ReimageNodes gives every node a fresh kernel: it stops the agent and the
// pods' servers, deletes the node's and pods' namespaces and its bpffs
// directory, builds them again with the same addresses, and starts the
// agent in mode. The Kubernetes objects are left as they are (a node
// re-imaged in place), so the control planes are shared across modes.
func (l *Lab) ReimageNodes(ctx context.Context, mode string) error {
	l.SetRoutingMode(mode)
	nodes := l.Nodes()
	err := parallel(len(nodes), func(k int) error {
		n := nodes[k]
		if n.Agent == nil {
			return nil // a node without an agent (misconfiguration drills) stays as it is
		}
		var errs []error
		errs = append(errs, n.Agent.Stop(10*time.Second))
		for _, p := range n.PodList() {
			errs = append(errs, p.Serve.Stop(2*time.Second), l.unplumbPod(ctx, p))
		}
		errs = append(errs, l.unplumbNode(ctx, n))
		if err := os.RemoveAll(n.BPFRoot); err != nil {
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("tear down node %s: %w", n.Name, err)
		}
		if err := l.plumbNode(ctx, n); err != nil {
			return err
		}
		for _, p := range n.PodList() {
			if err := l.plumbPod(ctx, p); err != nil {
				return err
			}
			if err := l.startServe(ctx, p); err != nil {
				return err
			}
		}
		return l.StartAgent(ctx, n)
	})
	if err != nil {
		return err
	}
	return l.recordLayout()
}

// RemoveNode stops the node's agent and pods, deletes its Pod and Node
// objects and removes its namespaces and bpffs directory.
func (l *Lab) RemoveNode(ctx context.Context, n *Node) error {
	var errs []error
	for _, p := range n.PodList() {
		errs = append(errs, l.RemovePod(ctx, p))
	}
	errs = append(errs, n.Agent.Stop(5*time.Second))
	if kube := n.Cluster.KubeServer(); n.Cluster.ownsKube() {
		n.DeletedAt = time.Now()
		errs = append(errs, deleteNode(ctx, kube.Client, n.Name))
	}
	errs = append(errs, l.unplumbNode(ctx, n))
	if err := os.RemoveAll(n.BPFRoot); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", n.BPFRoot, err))
	}
	if err := os.RemoveAll(filepath.Dir(n.ConfigDir)); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", n.ConfigDir, err))
	}
	l.mu.Lock()
	delete(n.Cluster.Nodes, n.Index)
	l.mu.Unlock()
	return errors.Join(errs...)
}

// RemoteConfig is what a node needs to reach one remote cluster: the files
// of one cluster in the mesh Secret.
type RemoteConfig struct {
	// Name is the remote cluster's name (the config file's name).
	Name      string
	Endpoints []string
	CAPEM     []byte
	CertPEM   []byte
	KeyPEM    []byte
}

// PeerConfig is the correct configuration for nodes of local to reach
// remote: remote's proxy endpoint and CA, and a client certificate with CN
// remote-<local> issued by remote's CA.
func (l *Lab) PeerConfig(local, remote *Cluster) (RemoteConfig, error) {
	kp, err := remote.PeerCert(local.Name)
	if err != nil {
		return RemoteConfig{}, err
	}
	return RemoteConfig{
		Name:      remote.Name,
		Endpoints: []string{remote.MeshEndpoint()},
		CAPEM:     remote.CA.CertPEM,
		CertPEM:   kp.CertPEM,
		KeyPEM:    kp.KeyPEM,
	}, nil
}

// MeshConfigs returns the correct configuration of every other cluster for
// nodes of local (the mesh Secret of local).
func (l *Lab) MeshConfigs(local *Cluster, remotes ...*Cluster) ([]RemoteConfig, error) {
	if remotes == nil {
		for _, c := range l.Clusters() {
			if c != local {
				remotes = append(remotes, c)
			}
		}
	}
	var out []RemoteConfig
	for _, r := range remotes {
		rc, err := l.PeerConfig(local, r)
		if err != nil {
			return nil, err
		}
		out = append(out, rc)
	}
	return out, nil
}

// WriteMeshConfig (re)writes the node's clustermesh config directory as a
// mounted Secret: the files of every remote in one atomic ..data swap, as
// the kubelet updates a Secret volume. Remotes left out are removed. The
// keys are exactly those `podmesh-certs connect` renders (certs.MeshSecretFiles),
// so every lab agent reads what an installed agent would.
func (l *Lab) WriteMeshConfig(n *Node, remotes []RemoteConfig) error {
	files := map[string][]byte{}
	for _, r := range remotes {
		rf, err := certs.MeshSecretFiles(r.Name, r.Endpoints, r.CAPEM, r.CertPEM, r.KeyPEM)
		if err != nil {
			return fmt.Errorf("node %s: config of %s: %w", n.Name, r.Name, err)
		}
		maps.Copy(files, rf)
	}
	if err := certs.WriteSecretVolume(n.ConfigDir, files); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	names := make([]string, len(remotes))
	for k, r := range remotes {
		names[k] = r.Name
	}
	n.Cluster.lab.mu.Lock()
	n.remotes = names
	n.Cluster.lab.mu.Unlock()
	return nil
}

// StatusAddr is the agent's --status-listen address (node loopback).
func (n *Node) StatusAddr() string { return net.JoinHostPort("127.0.0.1", itoa(AgentStatusPort)) }

// StartAgent starts the real podmesh-agent inside the node's namespace, with
// the flags and NODE_NAME environment a DaemonSet would give it.
func (l *Lab) StartAgent(ctx context.Context, n *Node) error {
	if n.Agent != nil {
		if exited, _ := n.Agent.Exited(); !exited {
			return fmt.Errorf("agent on %s already runs", n.Name)
		}
	}
	c := n.Cluster
	kube := c.KubeServer()
	if kube == nil {
		return fmt.Errorf("node %s: cluster %s has no API server", n.Name, c.Name)
	}
	n.Mode = l.opts.RoutingMode
	p, err := startProc(l.log, "agent-"+n.Name, n.NetNS, n.LogPath, []string{"NODE_NAME=" + n.Name},
		l.Bin("podmesh-agent"),
		"--cluster-name="+c.Name,
		"--cluster-id="+itoa(int(c.ID)),
		"--pod-cidrs="+joinPrefixes(c.PodCIDRs),
		"--kubeconfig="+kube.Kubeconfig,
		"--mesh-mode=direct", // the emulated nodes dial every remote; cache mode needs the real install
		"--clustermesh-config="+n.ConfigDir,
		"--routing-mode="+n.Mode,
		"--tunnel-port="+itoa(TunnelPort),
		"--mtu="+itoa(UnderlayMTU),
		"--bpf-root="+n.BPFRoot,
		"--sync-timeout=30s",
		"--status-listen="+n.StatusAddr(),
	)
	if err != nil {
		return err
	}
	n.Agent = p
	return nil
}

// StopAgent stops the node's agent gracefully (SIGTERM).
func (l *Lab) StopAgent(n *Node) error { return n.Agent.Stop(10 * time.Second) }

// KillAgent kills the node's agent (SIGKILL: a crash).
func (l *Lab) KillAgent(n *Node) error { return n.Agent.Kill() }

// nodeFor returns the node whose pod CIDR holds ip, or nil.
func (l *Lab) nodeFor(ip netip.Addr) *Node {
	for _, n := range l.Nodes() {
		if n.PodCIDR.Contains(ip) {
			return n
		}
	}
	return nil
}
