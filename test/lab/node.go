package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// newNode is node j of cluster c with the addressing plan's names and
// addresses (not yet in the cluster).
func (l *Lab) newNode(c *Cluster, j int) (*Node, error) {
	if j < 1 || j > MaxNodes {
		return nil, fmt.Errorf("node index %d: want 1..%d", j, MaxNodes)
	}
	i := c.Index
	n := &Node{
		Cluster: c,
		Index:   j,
		Name:    NodeName(i, j),
		NetNS:   l.Names.Node(i, j),
		IP:      NodeIP(i, j),
		PodCIDR: NodePodCIDR(i, j),
		Mode:    l.opts.RoutingMode,
	}
	if l.opts.DualStack {
		n.PodCIDR6 = NodePodCIDR6(i, j)
	}
	if slices.Contains(l.opts.PoolNodes, n.Name) {
		n.PodPool = PodPoolCIDR(i, j)
	}
	return n, nil
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

// PodCIDRs are the node's pod CIDRs (its spec.podCIDRs): IPv4, then IPv6
// in a dual-stack lab.
func (n *Node) PodCIDRs() []netip.Prefix {
	if n.PodCIDR6.IsValid() {
		return []netip.Prefix{n.PodCIDR, n.PodCIDR6}
	}
	return []netip.Prefix{n.PodCIDR}
}

// podRange4 is the IPv4 range the node's pods get addresses from: its
// pod CIDR, or its pool. The cluster's other nodes route them to it.
func (n *Node) podRange4() netip.Prefix {
	if n.PodPool.IsValid() {
		return n.PodPool
	}
	return n.PodCIDR
}

// unplumbNode deletes the node's underlay veth (synchronously: the kernel
// destroys a deleted namespace's links only later, and the same names are
// about to be reused) and then its namespace.
func (l *Lab) unplumbNode(ctx context.Context, n *Node) error {
	err := ipBatch(ctx, l.Names.Underlay(), fmt.Sprintf("link del c%dn%d", n.Cluster.Index, n.Index))
	return errors.Join(err, delNetNS(n.NetNS))
}

// RemoteConfig is what a cluster's agents need to reach one remote
// cluster: that cluster's files in the podmesh-clustermesh Secret.
type RemoteConfig struct {
	// Name is the remote cluster's name (the Secret key's name).
	Name      string
	Endpoints []string
	CAPEM     []byte
	CertPEM   []byte
	KeyPEM    []byte
}

// PeerConfig is the correct configuration for nodes of local to reach
// remote: remote's NodePort endpoints and CA, and a client certificate with
// CN remote-<local> issued by remote's CA.
func (l *Lab) PeerConfig(local, remote *Cluster) (RemoteConfig, error) {
	kp, err := remote.PeerCert(local.Name)
	if err != nil {
		return RemoteConfig{}, err
	}
	return RemoteConfig{
		Name:      remote.Name,
		Endpoints: remote.MeshEndpoints(),
		CAPEM:     remote.CA.CertPEM,
		CertPEM:   kp.CertPEM,
		KeyPEM:    kp.KeyPEM,
	}, nil
}

// MeshConfigs returns the correct configuration of the remotes (every
// other cluster when none is given) for nodes of local.
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

// StatusAddr is the agent's --status-listen address (node loopback; the
// agent pod runs in the node's network namespace).
func (n *Node) StatusAddr() string { return net.JoinHostPort("127.0.0.1", itoa(AgentStatusPort)) }

// AgentPIDs lists the podmesh-agent processes running on node n (the agent
// pod's container: host network, so in the node's namespace).
func (l *Lab) AgentPIDs(n *Node) ([]int, error) {
	pids, err := procsInNetNS(map[uint64]bool{netnsInode(n.NetNS): true})
	if err != nil {
		return nil, err
	}
	var out []int
	for _, pid := range pids {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(comm)) == "podmesh-agent" {
			out = append(out, pid)
		}
	}
	return out, nil
}

// KillAgent kills node n's agent process with SIGKILL (a crash): the
// kubelet restarts the container, as the pod's restartPolicy says.
func (l *Lab) KillAgent(n *Node) error {
	pids, err := l.AgentPIDs(n)
	if err != nil {
		return err
	}
	if len(pids) != 1 {
		return fmt.Errorf("node %s: %d podmesh-agent processes, want 1", n.Name, len(pids))
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		return fmt.Errorf("node %s: kill agent %d: %w", n.Name, pids[0], err)
	}
	if !waitGone(pids[0], 10*time.Second) {
		return fmt.Errorf("node %s: agent %d still runs after SIGKILL", n.Name, pids[0])
	}
	return nil
}
