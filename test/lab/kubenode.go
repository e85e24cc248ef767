package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// kernelSysctlFence lists the host-global sysctls the kubelet writes when it
// finds other values, with the values it wants. Each real node bind-mounts
// files holding exactly these values over them in its private mount
// namespace, so the kubelet reads what it wants and writes nothing to the
// host.
var kernelSysctlFence = []struct{ key, value string }{
	{"vm/overcommit_memory", "1"},
	{"vm/panic_on_oom", "0"},
	{"kernel/panic", "10"},
	{"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"},
	{"kernel/keys/root_maxbytes", "25000000"},
}

// kubeNodeFiles are the paths of one real node's own files.
type kubeNodeFiles struct {
	Dir, Socket, CNIConfDir, CNIIPAMDir, KubeletRoot, Containerd     string
	Cgroup                                                           string
	Launcher, ContainerdConfig, KubeletConfig, ProxyConfig           string
	Kubeconfig, ProxyKubeconfig, CAFile                              string
	BPFDir                                                           string
	HostDirs                                                         [][2]string // [own dir, host path]
	HostFiles                                                        [][2]string
	Sysctls                                                          [][2]string // [file, /proc/sys path]
	Images                                                           []string
	LogDir, Name, IP, ClusterCIDR, PodRange, PodRange6, SandboxImage string
	KubeletBin, ProxyBin                                             string
	MeshPods                                                         string
}

// MeshPodRange holds the pod CIDRs of every cluster a lab can create. A
// node masquerades what its pods send anywhere else (another cluster's
// nodes, the control plane), as a cluster's CNI or ip-masq-agent does, and
// never what they send to a pod of the mesh (podmesh carries the pods' own
// source addresses). Without it a pod could reach nothing outside its
// cluster but through podmesh itself: a clustermesh-apiserver (a pod) could
// not reach the remote proxies it caches for its own agents, whose routes
// back to it come from that very cache (docs/install.md, "Before you start").
var MeshPodRange = netip.MustParsePrefix("10.0.0.0/8")

// AddKubeNode creates node j of cluster c as a real Kubernetes node: its
// network namespace on the underlay (routes to the other nodes' pod CIDRs,
// as a cloud's VPC routes would), and, in a private mount namespace fenced
// from the host, its own containerd, kube-proxy and kubelet. The lab assigns
// the node's pod CIDRs (spec.podCIDRs, as a cloud IPAM does) and waits
// until the node is Ready. A pool node's CNI allocates from its PodPool
// instead (Options.PoolNodes).
func (l *Lab) AddKubeNode(ctx context.Context, c *Cluster, j int) (*Node, error) {
	n, err := l.newNode(c, j)
	if err != nil {
		return nil, err
	}
	n.BPFRoot = filepath.Join(l.bpfBase, n.NetNS, "podmesh")
	n.LogPath = l.logPath("kubelet-" + n.Name)
	l.mu.Lock()
	if _, ok := c.Nodes[j]; ok {
		l.mu.Unlock()
		return nil, fmt.Errorf("node %s exists", n.Name)
	}
	// A node that joins an installed cluster mounts the cluster's Secret.
	for _, o := range c.Nodes {
		n.remotes = slices.Clone(o.remotes)
		break
	}
	c.Nodes[j] = n
	l.mu.Unlock()

	t0 := time.Now()
	if err := l.plumbKubeNode(ctx, n); err != nil {
		return nil, err
	}
	f, err := l.writeKubeNodeFiles(n)
	if err != nil {
		return nil, err
	}
	if err := makeNodeCgroup(l.opts.Prefix, n.Name); err != nil {
		return nil, err
	}
	l.progress("node %s: starting containerd, kube-proxy and kubelet in %s", n.Name, n.NetNS)
	p, err := startProc(l.log, "node-"+n.Name, n.NetNS, n.LogPath, nil,
		"unshare", "--mount", "--propagation", "slave", "--", "sh", f.Launcher)
	if err != nil {
		return nil, err
	}
	n.Kubelet = p
	kc := c.Kube.Client
	if err := waitFor(ctx, 2*time.Minute, 100*time.Millisecond, "node "+n.Name+" registered", func() (bool, error) {
		if exited, err := p.Exited(); exited {
			return false, permanent{fmt.Errorf("node %s launcher exited: %v; log tail:\n%s", n.Name, err, TailLog(n.LogPath, 30))}
		}
		_, err := kc.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		return err == nil, err
	}); err != nil {
		return nil, err
	}
	cidrs, err := json.Marshal(map[string]any{"spec": map[string]any{"podCIDR": n.PodCIDR.String(), "podCIDRs": n.PodCIDRs()}})
	if err != nil {
		return nil, err
	}
	if _, err := kc.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, cidrs, metav1.PatchOptions{}); err != nil {
		return nil, fmt.Errorf("node %s: set pod CIDR: %w", n.Name, err)
	}
	if err := l.WaitNodeReady(ctx, n, 2*time.Minute); err != nil {
		return nil, err
	}
	n.ReadyAfter = time.Since(t0)
	l.progress("node %s Ready %.1fs after start", n.Name, n.ReadyAfter.Seconds())
	return n, nil
}

// plumbKubeNode creates the node's namespace and link, and the routes that
// carry pod traffic between the cluster's nodes and to the control plane
// (the role of a cloud's VPC routes; never masqueraded). Nodes are plumbed
// one at a time, so of two nodes added at once the second routes both ways.
// Only IPv4 pod ranges are routed so: the underlay is IPv4, and Linux has
// no IPv6 route via an IPv4 next hop (pods of a dual-stack cluster reach
// each other's IPv6 addresses only on the same node).
func (l *Lab) plumbKubeNode(ctx context.Context, n *Node) error {
	l.routeMu.Lock()
	defer l.routeMu.Unlock()
	c := n.Cluster
	if err := l.plumbNode(ctx, n); err != nil {
		return err
	}
	// A node has a default route (the control plane stands in for the
	// gateway; it forwards nothing): the kubelet and kube-proxy need one
	// for Service addresses, which exist only as kube-proxy's DNAT rules.
	lines := []string{"route replace default via " + c.IP.String()}
	for _, o := range c.NodeList() {
		if o == n || !o.plumbed {
			continue
		}
		lines = append(lines, fmt.Sprintf("route replace %s via %s proto static", o.podRange4(), o.IP))
		if err := ipBatch(ctx, o.NetNS, fmt.Sprintf("route replace %s via %s proto static", n.podRange4(), n.IP)); err != nil {
			return err
		}
	}
	if err := ipBatch(ctx, n.NetNS, lines...); err != nil {
		return err
	}
	if err := ipBatch(ctx, c.NetNS, fmt.Sprintf("route replace %s via %s proto static", n.podRange4(), n.IP)); err != nil {
		return err
	}
	n.plumbed = true
	return nil
}

// WaitNodeReady waits until the node's Ready condition is True and its
// not-ready taint is gone (the scheduler places pods on it from then on).
func (l *Lab) WaitNodeReady(ctx context.Context, n *Node, timeout time.Duration) error {
	kc := n.Cluster.Kube.Client
	return waitFor(ctx, timeout, 100*time.Millisecond, "node "+n.Name+" Ready", func() (bool, error) {
		if exited, err := n.Kubelet.Exited(); exited {
			return false, permanent{fmt.Errorf("node %s launcher exited: %v; log tail:\n%s", n.Name, err, TailLog(n.LogPath, 30))}
		}
		node, err := kc.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, t := range node.Spec.Taints {
			if t.Key == corev1.TaintNodeNotReady {
				return false, fmt.Errorf("still tainted %s", t.Key)
			}
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return true, nil
				}
				return false, fmt.Errorf("Ready=%s: %s", cond.Status, cond.Message)
			}
		}
		return false, fmt.Errorf("no Ready condition yet")
	})
}

// writeKubeNodeFiles writes the node's containerd, CNI, kubelet and
// kube-proxy configuration and its launcher script.
func (l *Lab) writeKubeNodeFiles(n *Node) (*kubeNodeFiles, error) {
	c := n.Cluster
	dir := filepath.Join(l.StateDir, "nodes", n.Name)
	f := &kubeNodeFiles{
		Dir:              dir,
		Socket:           filepath.Join(dir, "run", "containerd.sock"),
		CNIConfDir:       filepath.Join(dir, "cni", "net.d"),
		CNIIPAMDir:       filepath.Join(dir, "cni", "ipam"),
		KubeletRoot:      filepath.Join(dir, "kubelet"),
		Containerd:       filepath.Join(dir, "containerd"),
		Cgroup:           "/" + cgroupRel(l.opts.Prefix, n.Name),
		Launcher:         filepath.Join(dir, "launch.sh"),
		ContainerdConfig: filepath.Join(dir, "containerd.toml"),
		KubeletConfig:    filepath.Join(dir, "kubelet.yaml"),
		ProxyConfig:      filepath.Join(dir, "kube-proxy.yaml"),
		CAFile:           c.Kube.CAFile(),
		BPFDir:           filepath.Join(l.bpfBase, n.NetNS),
		LogDir:           filepath.Join(l.StateDir, "logs"),
		Name:             n.Name,
		IP:               n.IP.String(),
		ClusterCIDR:      joinPrefixes(c.PodCIDRs),
		PodRange:         n.podRange4().String(),
		SandboxImage:     l.opts.Images.Ref("pause"),
		Images:           l.opts.Images.Archives(),
		KubeletBin:       l.Bin("kubelet"),
		ProxyBin:         l.Bin("kube-proxy"),
		MeshPods:         MeshPodRange.String(),
	}
	if n.PodCIDR6.IsValid() {
		f.PodRange6 = n.PodCIDR6.String()
	}
	if f.SandboxImage == "" {
		return nil, fmt.Errorf("node %s: no pause image among the lab's images", n.Name)
	}
	for _, d := range []string{f.CNIConfDir, f.CNIIPAMDir, filepath.Join(dir, "run"), filepath.Join(f.KubeletRoot, "pki"),
		filepath.Join(dir, "pod-logs"), filepath.Join(dir, "volume-plugins"), f.BPFDir, filepath.Join(dir, "sysctl")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("node %s: create %s: %w", n.Name, d, err)
		}
	}
	for _, h := range nodeHostDirs {
		own := filepath.Join(dir, "host", strings.ReplaceAll(strings.TrimPrefix(h, "/"), "/", "-"))
		if err := os.MkdirAll(own, 0o755); err != nil {
			return nil, fmt.Errorf("node %s: create %s: %w", n.Name, own, err)
		}
		f.HostDirs = append(f.HostDirs, [2]string{own, h})
	}
	for _, h := range nodeHostFiles {
		own := filepath.Join(dir, "host", filepath.Base(h))
		if err := os.WriteFile(own, nil, 0o600); err != nil {
			return nil, fmt.Errorf("node %s: create %s: %w", n.Name, own, err)
		}
		f.HostFiles = append(f.HostFiles, [2]string{own, h})
	}
	for _, s := range kernelSysctlFence {
		own := filepath.Join(dir, "sysctl", strings.ReplaceAll(s.key, "/", "."))
		if err := os.WriteFile(own, []byte(s.value+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("node %s: write %s: %w", n.Name, own, err)
		}
		f.Sysctls = append(f.Sysctls, [2]string{own, "/proc/sys/" + s.key})
	}
	var err error
	if f.Kubeconfig, err = c.Kube.NodeKubeconfig(n.Name); err != nil {
		return nil, err
	}
	if f.ProxyKubeconfig, err = c.Kube.ClientKubeconfig("kube-proxy-"+n.Name, "system:kube-proxy"); err != nil {
		return nil, err
	}
	for path, tmpl := range map[string]*template.Template{
		f.ContainerdConfig: containerdTmpl,
		filepath.Join(f.CNIConfDir, "10-lab.conflist"): cniTmpl,
		f.KubeletConfig: kubeletTmpl,
		f.ProxyConfig:   kubeProxyTmpl,
		f.Launcher:      launcherTmpl,
	} {
		if err := writeTemplate(path, tmpl, f); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return f, nil
}

func writeTemplate(path string, t *template.Template, data any) error {
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return fmt.Errorf("render %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// containerdTmpl: containerd 1.6 with every path of its own, the CRI plugin
// using the node's CNI directory and the lab's pause image, cgroupfs (no
// systemd), and the snapshotters and tracing that cannot work here off.
var containerdTmpl = template.Must(template.New("containerd").Parse(`version = 2
root = "{{.Containerd}}/root"
state = "{{.Containerd}}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Containerd}}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.SandboxImage}}"
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{{.CNIConfDir}}"
`))

// cniTmpl: Debian's bridge + host-local + portmap plugins with the node's
// pod range (its pod CIDR, or its pool), and its IPv6 pod CIDR in a
// dual-stack lab; no masquerade (podmesh needs the pods' own source
// addresses).
var cniTmpl = template.Must(template.New("cni").Parse(`{
  "cniVersion": "0.4.0",
  "name": "lab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "mtu": 1450,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{{.PodRange}}"}]{{if .PodRange6}}, [{"subnet": "{{.PodRange6}}"}]{{end}}],
        "routes": [{"dst": "0.0.0.0/0"}{{if .PodRange6}}, {"dst": "::/0"}{{end}}],
        "dataDir": "{{.CNIIPAMDir}}"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`))

var kubeletTmpl = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: {{.Cgroup}}
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{{.Socket}}
address: {{.IP}}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: {{.CAFile}}}
authorization: {mode: AlwaysAllow}
podLogsDir: {{.Dir}}/pod-logs
volumePluginDir: {{.Dir}}/volume-plugins
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# Secret volumes (the agents' clustermesh config) are refreshed on the pod
# sync: every KubeletSyncFrequency instead of every minute.
syncFrequency: ` + KubeletSyncFrequency.String() + `
`))

// KubeletSyncFrequency is the lab kubelets' pod sync period, which is also
// how often they refresh Secret volumes (a pod worker resyncs after 1 to 1.5
// periods): the Secret drills wait for it. Users' kubelets default to a
// minute; the mechanism is the same, only the wait is shorter.
const KubeletSyncFrequency = 3 * time.Second

// kubeProxyTmpl: iptables mode; the conntrack settings of zero leave the
// host-global conntrack sysctls alone.
var kubeProxyTmpl = template.Must(template.New("kube-proxy").Parse(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: {{.ProxyKubeconfig}}}
mode: iptables
hostnameOverride: {{.Name}}
clusterCIDR: {{.ClusterCIDR}}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`))

// launcherTmpl runs inside `nsenter --net=<node> unshare --mount
// --propagation slave`: it fences the host (per-node directories over the
// shared host paths, fixed sysctl files over the kernel ones, the node's
// own bpffs directory on /sys/fs/bpf), starts containerd, imports the lab's
// images, starts kube-proxy and becomes the kubelet. Everything it mounts
// lives in the node's mount namespace and vanishes with its processes.
var launcherTmpl = template.Must(template.New("launcher").Parse(`set -eu
mount --make-rslave /
{{range .HostDirs}}mount --bind {{index . 0}} {{index . 1}}
{{end}}{{range .HostFiles}}mount --bind {{index . 0}} {{index . 1}}
{{end}}{{range .Sysctls}}mount --bind {{index . 0}} {{index . 1}}
{{end}}mount --bind {{.BPFDir}} /sys/fs/bpf
containerd --config {{.ContainerdConfig}} >>{{.LogDir}}/containerd-{{.Name}}.log 2>&1 &
tries=0
until ctr -a {{.Socket}} version >/dev/null 2>&1; do
  tries=$((tries+1)); [ $tries -lt 600 ] || { echo "containerd did not come up"; exit 1; }
  sleep 0.1
done
{{range .Images}}ctr -a {{$.Socket}} -n k8s.io images import {{.}} >/dev/null
{{end}}echo "images imported"
iptables -w -t nat -A POSTROUTING -s {{.PodRange}} ! -d {{.MeshPods}} -j MASQUERADE
{{.ProxyBin}} --config {{.ProxyConfig}} >>{{.LogDir}}/kube-proxy-{{.Name}}.log 2>&1 &
exec {{.KubeletBin}} --config {{.KubeletConfig}} --kubeconfig {{.Kubeconfig}} --root-dir {{.KubeletRoot}} \
  --cert-dir {{.KubeletRoot}}/pki --node-ip {{.IP}} --hostname-override {{.Name}} --v=0
`))

// RemoveKubeNode takes a real node out: it stops the kubelet, containerd and
// kube-proxy, kills what still runs in the node's cgroups (its pods),
// deletes the Node object (the pods bound to it go with it), removes the
// routes to its pod CIDR, its namespace, cgroups, bpffs directory and files.
// Drain it first (kubectl drain) to move its pods in an orderly way.
func (l *Lab) RemoveKubeNode(ctx context.Context, n *Node) error {
	c := n.Cluster
	var errs []error
	errs = append(errs, n.Kubelet.Stop(10*time.Second))
	nsPids, err := procsInNetNS(map[uint64]bool{netnsInode(n.NetNS): true})
	errs = append(errs, err)
	for _, pid := range nsPids { // the containerd shims
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range nsPids {
		waitGone(pid, 5*time.Second)
	}
	errs = append(errs, removeCgroups(l.opts.Prefix, n.Name))
	n.DeletedAt = time.Now()
	errs = append(errs, deleteNode(ctx, c.Kube.Client, n.Name))
	l.routeMu.Lock()
	defer l.routeMu.Unlock()
	l.mu.Lock()
	delete(c.Nodes, n.Index)
	l.mu.Unlock()
	for _, o := range c.NodeList() {
		errs = append(errs, ipBatch(ctx, o.NetNS, fmt.Sprintf("route del %s via %s", n.podRange4(), n.IP)))
	}
	errs = append(errs, ipBatch(ctx, c.NetNS, fmt.Sprintf("route del %s via %s", n.podRange4(), n.IP)))
	errs = append(errs, l.unplumbNode(ctx, n))
	if err := os.RemoveAll(filepath.Dir(n.BPFRoot)); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(filepath.Join(l.StateDir, "nodes", n.Name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// deleteNode removes a Node object; a missing one is not an error.
func deleteNode(ctx context.Context, kc kubernetes.Interface, name string) error {
	err := kc.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s: %w", name, err)
	}
	return nil
}
