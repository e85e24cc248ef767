package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/test/kubetest"
)

// Routing modes of podmesh-agent.
const (
	ModeEBPF   = "ebpf"
	ModeVXLAN  = "vxlan"
	ModeNative = "native"
)

// Ports used inside the lab's namespaces.
const (
	KubePort        = 6443
	KubeEtcdPort    = 12379 // kubetest's etcd, on the control plane's loopback
	MeshPort        = 2379  // clustermesh-apiserver proxy, on the control-plane IP
	MeshHealthPort  = 9963
	AgentStatusPort = 9876 // podmesh-agent --status-listen, on the node's loopback
	ServeTCPPort    = 7777 // pods' echo-the-peer server
	ServeUDPPort    = 7778
	TunnelPort      = 8472
	UnderlayMTU     = 1500
)

// Options configure a lab.
type Options struct {
	// Prefix starts every name the lab creates (see ValidatePrefix).
	Prefix string
	// StateRoot holds the state directory <StateRoot>/<Prefix>; default
	// DefaultStateRoot.
	StateRoot string
	// BinDir holds the Kubernetes tools (KubeTools); default
	// kubetest.BinDir().
	BinDir string
	// RoutingMode of every agent; default ebpf.
	RoutingMode string
	// Log receives the lab's own structured log; default discards.
	Log logrus.FieldLogger
	// Progress, when set, receives one line per slow step.
	Progress io.Writer
	// DualStack makes the clusters dual-stack: IPv4 and IPv6 service
	// ranges, pod CIDRs, CNI ranges and kube-proxy cluster CIDRs, so pods
	// get both families (the underlay stays IPv4, as the tunnel endpoints
	// are the nodes' IPv4 InternalIPs).
	DualStack bool
	// PoolNodes names nodes (c2-n2) whose CNI allocates pod addresses from
	// a pool of their own, PodPoolCIDR(i, j), instead of their
	// spec.podCIDR, as multi-pool IPAM does: their pods' IPs lie outside
	// the node's pod CIDR (inside the cluster's), and podmesh must publish
	// each of them as a host prefix.
	PoolNodes []string
	// Images are the container images every node imports.
	Images ImageSet
	// RepoDir is the podmesh checkout whose daemonset/ the lab installs;
	// default: found from the working directory.
	RepoDir string
	// APIServerReplicas, when set, overrides the clustermesh-apiserver
	// Deployment's replicas (daemonset/base runs 2) in every cluster's
	// overlay, as a user's overlay would.
	APIServerReplicas int
}

// Lab is one running multi-cluster lab. Its methods are safe for concurrent
// use unless they say otherwise.
type Lab struct {
	Names    Names
	StateDir string
	opts     Options
	log      logrus.FieldLogger
	start    time.Time
	bpfBase  string // directory that holds per-node bpffs roots

	// InstallConverged is how long a real lab took from the start of the
	// podmesh install to a converged mesh.
	InstallConverged time.Duration

	// routeMu serialises the plumbing of real nodes (see plumbKubeNode).
	routeMu sync.Mutex

	// mu protects clusters, the maps inside Cluster and Node, and state.
	mu       sync.Mutex
	clusters map[int]*Cluster
	state    *State
}

// Cluster is one real Kubernetes cluster: its control plane in a namespace
// of its own, its nodes, and the CA its clustermesh-apiserver's
// certificates come from.
type Cluster struct {
	lab      *Lab
	Index    int
	Name     string
	ID       uint32
	PodCIDRs []netip.Prefix
	// NetNS is the control-plane namespace (etcd, kube-apiserver,
	// kube-controller-manager, kube-scheduler).
	NetNS string
	IP    netip.Addr
	// Kube is the cluster's control plane.
	Kube *kubetest.Server
	CA   *certs.CA
	dir  string
	// AllowedPeers are the client certificate CNs its clustermesh-apiserver
	// accepts (set by the install).
	AllowedPeers []string
	Nodes        map[int]*Node
	peerCerts    map[string]*certs.KeyPair // CN -> client cert signed by CA
}

// Node is one real node: a namespace on the underlay running containerd,
// kube-proxy and a kubelet (AddKubeNode); podmesh's agent runs on it as the
// DaemonSet's pod.
type Node struct {
	Cluster *Cluster
	Index   int
	Name    string
	NetNS   string
	IP      netip.Addr
	PodCIDR netip.Prefix
	// PodCIDR6 is the IPv6 pod CIDR in a dual-stack lab (else invalid).
	PodCIDR6 netip.Prefix
	// PodPool is the range the node's CNI allocates IPv4 pod addresses
	// from when it is not PodCIDR (Options.PoolNodes; else invalid).
	PodPool netip.Prefix
	// DeletedAt is when RemoveKubeNode started deleting the Node object.
	DeletedAt time.Time
	BPFRoot   string
	LogPath   string
	// Kubelet is the node's launcher (it becomes the kubelet; containerd
	// and kube-proxy are its children).
	Kubelet *Proc
	// ReadyAfter is how long the node took from start to Ready.
	ReadyAfter time.Duration
	// plumbed is set once the node's namespace and routes exist (guarded
	// by Lab.routeMu).
	plumbed bool
	Mode    string
	// remotes are the cluster names in the node's mesh config.
	remotes []string
}

// New prepares a lab: its state directory, a bpffs for the agents and the
// underlay namespace with its bridge. Close removes everything again.
func New(ctx context.Context, o Options) (l *Lab, err error) {
	if err := ValidatePrefix(o.Prefix); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab needs root (network namespaces)")
	}
	if o.StateRoot == "" {
		o.StateRoot = DefaultStateRoot
	}
	if o.BinDir == "" {
		if o.BinDir, err = kubetest.BinDir(); err != nil {
			return nil, err
		}
	}
	if o.RoutingMode == "" {
		o.RoutingMode = ModeEBPF
	}
	if o.Log == nil {
		nl := logrus.New()
		nl.Out = io.Discard
		o.Log = nl
	}
	lab := &Lab{
		Names:    Names{Prefix: o.Prefix},
		StateDir: filepath.Join(o.StateRoot, o.Prefix),
		opts:     o,
		log:      o.Log.WithField("lab", o.Prefix),
		start:    time.Now(),
		clusters: make(map[int]*Cluster),
	}
	l = lab
	if err := CheckKubePrerequisites(ctx, o.Log); err != nil {
		return nil, err
	}
	// The CLI's own log files may already exist; anything else is debris.
	leftovers, _ := Discover(o.Prefix, o.StateRoot)
	leftovers.Files = nil
	if !leftovers.Empty() {
		return nil, fmt.Errorf("lab %s already exists or left debris (%s): run `podmesh-lab down --prefix %s`", o.Prefix, leftovers, o.Prefix)
	}
	if err := os.MkdirAll(filepath.Join(l.StateDir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("create lab state dir: %w", err)
	}
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("read own start time: %w", err)
	}
	l.state = &State{Prefix: o.Prefix, OwnerPID: os.Getpid(), OwnerStart: start, Created: time.Now().UTC()}
	if err := writeState(l.StateDir, l.state); err != nil {
		return nil, err
	}
	// "return nil, err" below clears l before this runs: close lab.
	defer func() {
		if err != nil {
			_ = lab.Close()
			l = nil
		}
	}()
	if err := l.setupBPFFS(); err != nil {
		return nil, err
	}
	if err := ensureMountPoints(o.StateRoot); err != nil {
		return nil, err
	}
	if err := addNetNS(ctx, l.Names.Underlay()); err != nil {
		return nil, err
	}
	if err := ipBatch(ctx, l.Names.Underlay(),
		"link add br0 type bridge",
		"link set br0 up",
	); err != nil {
		return nil, err
	}
	return l, nil
}

// setupBPFFS picks where agents pin: /sys/fs/bpf/<prefix>-<node> when
// /sys/fs/bpf is a bpffs, otherwise a bpffs the lab mounts under its own
// state directory (never on /sys/fs/bpf itself, which would change the host).
func (l *Lab) setupBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		l.bpfBase = "/sys/fs/bpf"
		return nil
	}
	dir := filepath.Join(l.StateDir, "bpffs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	l.bpfBase = dir
	l.mu.Lock()
	l.state.BPFMount = dir
	err := writeState(l.StateDir, l.state)
	l.mu.Unlock()
	return err
}

func (l *Lab) progress(format string, args ...any) {
	l.log.Infof(format, args...)
	if l.opts.Progress != nil {
		fmt.Fprintf(l.opts.Progress, "[%5.1fs] %s\n", time.Since(l.start).Seconds(), fmt.Sprintf(format, args...))
	}
}

// DualStack reports whether the clusters are dual-stack.
func (l *Lab) DualStack() bool { return l.opts.DualStack }

// RoutingMode is the agents' routing mode (the overlays' routing-mode).
func (l *Lab) RoutingMode() string { return l.opts.RoutingMode }

// SetRoutingMode changes the routing mode of overlays written from now on
// (SwitchRoutingMode applies it).
func (l *Lab) SetRoutingMode(mode string) { l.opts.RoutingMode = mode }

// Bin returns the path of a binary in the lab's bin directory.
func (l *Lab) Bin(name string) string { return filepath.Join(l.opts.BinDir, name) }

// logPath returns the path of a log file under the state directory.
func (l *Lab) logPath(name string) string { return filepath.Join(l.StateDir, "logs", name+".log") }

// Cluster returns cluster i, or nil.
func (l *Lab) Cluster(i int) *Cluster {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.clusters[i]
}

// Clusters returns every cluster, by index.
func (l *Lab) Clusters() []*Cluster {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*Cluster, 0, len(l.clusters))
	for _, c := range l.clusters {
		out = append(out, c)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Index < out[b].Index })
	return out
}

// NodeList returns the cluster's nodes, by index.
func (c *Cluster) NodeList() []*Node {
	c.lab.mu.Lock()
	defer c.lab.mu.Unlock()
	out := make([]*Node, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Index < out[b].Index })
	return out
}

// Node returns the cluster's node with this name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.NodeList() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Nodes returns every node of the lab (or of the given clusters), ordered.
func (l *Lab) Nodes(clusters ...*Cluster) []*Node {
	if len(clusters) == 0 {
		clusters = l.Clusters()
	}
	var out []*Node
	for _, c := range clusters {
		out = append(out, c.NodeList()...)
	}
	return out
}

// addUnderlayLink creates a veth from the underlay bridge into netns and
// gives the namespace side (eth0) the address ip.
func (l *Lab) addUnderlayLink(ctx context.Context, brPort, netns string, ip netip.Addr, macKind byte, i, j int) error {
	if err := ipBatch(ctx, l.Names.Underlay(),
		fmt.Sprintf("link add %s mtu %d type veth peer name eth0 address %s mtu %d netns %s", brPort, UnderlayMTU, mac(macKind, i, j), UnderlayMTU, netns),
		fmt.Sprintf("link set %s master br0 up", brPort),
	); err != nil {
		return err
	}
	return ipBatch(ctx, netns,
		fmt.Sprintf("addr add %s/%d dev eth0", ip, UnderlayBits),
		"link set eth0 up",
	)
}

// Close stops every process, stops the control planes, removes every
// namespace, bpffs directory and mount the lab created, and its state
// directory. It is safe to call more than once.
func (l *Lab) Close() error {
	var errs []error
	nodes := l.Nodes()
	errs = append(errs, parallel(len(nodes), func(k int) error {
		return nodes[k].Kubelet.Stop(10 * time.Second)
	}))
	clusters := l.Clusters()
	errs = append(errs, parallel(len(clusters), func(k int) error {
		if c := clusters[k]; c.Kube != nil {
			return c.Kube.Stop()
		}
		return nil
	}))
	// Whatever is left (namespaces, stray processes, bpffs, mounts, the state
	// directory) goes the same way as after a crash.
	errs = append(errs, Down(l.opts.Prefix, l.opts.StateRoot, l.log))
	return errors.Join(errs...)
}

// IP runs ip commands (batch lines, without "ip") in one of the lab's
// namespaces; it refuses any other namespace.
func (l *Lab) IP(ctx context.Context, netns string, lines ...string) error {
	if !l.Names.Owns(netns) {
		return fmt.Errorf("netns %q is not lab %s's", netns, l.Names.Prefix)
	}
	return ipBatch(ctx, netns, lines...)
}

// LogFiles lists the log files of every process the lab started.
func (l *Lab) LogFiles() []string {
	ents, err := os.ReadDir(filepath.Join(l.StateDir, "logs"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		out = append(out, filepath.Join(l.StateDir, "logs", e.Name()))
	}
	return out
}

// TailLog returns the last n lines of a log file.
func TailLog(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func itoa(i int) string { return strconv.Itoa(i) }
