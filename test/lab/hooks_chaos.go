package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Fault-injection hooks for the chaos soak (test/chaos) and the upgrade
// test (test/upgrade): they kill processes the lab started — found by PID
// among the processes inside the lab's own namespaces, never by name on the
// host — and start them again with the same command line, environment and
// namespaces, as a supervisor (systemd, a kubelet's static pod) would.

// Processes the hooks know how to find.
const (
	ProcEtcd              = "etcd"            // a cluster's etcd (control plane)
	ProcKubeAPIServer     = "kube-apiserver"  // a cluster's kube-apiserver
	ProcControllerManager = "kube-controller" // kube-controller-manager (comm is cut at 15 bytes)
	ProcScheduler         = "kube-scheduler"  // a cluster's kube-scheduler
	ProcKubelet           = "kubelet"         // a real node's kubelet
	ProcContainerd        = "containerd"      // a real node's containerd
)

// Process is one running process of the lab, as found by Process: enough
// to start it again.
type Process struct {
	Name  string
	PID   int
	NetNS string
	Argv  []string
	Env   []string
	// node is set for a real node's processes (they live in the node's
	// private mount namespace).
	node *Node
}

// Process finds the process name of cluster c's control plane (n nil) or
// of real node n, among the processes inside that lab namespace.
func (l *Lab) Process(c *Cluster, n *Node, name string) (Process, error) {
	netns := c.NetNS
	if n != nil {
		netns = n.NetNS
	}
	pid, err := labProcByComm(netns, name)
	if err != nil {
		return Process{}, err
	}
	argv, err := procStrings(pid, "cmdline")
	if err != nil {
		return Process{}, err
	}
	env, err := procStrings(pid, "environ")
	if err != nil {
		return Process{}, err
	}
	return Process{Name: name, PID: pid, NetNS: netns, Argv: argv, Env: env, node: n}, nil
}

// Alive reports whether the process still runs (the same PID with the same
// name, not a zombie).
func (p Process) Alive() bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/comm")
	return err == nil && strings.TrimSpace(string(data)) == p.Name && alive(p.PID)
}

// Respawn starts p again with the same argv and environment in the same
// network namespace (and a node's process in the node's mount namespace,
// taken from a surviving process of the node), as a supervisor would, and
// returns the new process. A node's kubelet becomes the node's Kubelet.
func (l *Lab) Respawn(p Process) (Process, error) {
	argv := p.Argv
	logPath := l.logPath("chaos-" + p.NetNS + "-" + p.Name)
	if n := p.node; n != nil {
		survivor := -1
		for _, other := range []string{ProcContainerd, ProcKubelet} {
			if other == p.Name {
				continue
			}
			if pid, err := labProcByComm(p.NetNS, other); err == nil {
				survivor = pid
				break
			}
		}
		if survivor < 0 {
			return Process{}, fmt.Errorf("node %s: no kubelet or containerd left to take the mount namespace from", n.Name)
		}
		argv = append([]string{"nsenter", "--mount=/proc/" + strconv.Itoa(survivor) + "/ns/mnt", "--"}, argv...)
		switch p.Name {
		case ProcKubelet:
			logPath = n.LogPath
		case ProcContainerd:
			logPath = l.logPath("containerd-" + n.Name)
		}
	}
	proc, err := startProc(l.log, "chaos-"+p.Name, p.NetNS, logPath, p.Env, argv...)
	if err != nil {
		return Process{}, err
	}
	if p.node != nil && p.Name == ProcKubelet {
		l.mu.Lock()
		p.node.Kubelet = proc
		l.mu.Unlock()
	}
	np := p
	np.PID = proc.Pid()
	return np, nil
}

// KillAndRestart SIGKILLs one process of the lab — etcd or kube-apiserver of
// cluster c's control plane (n nil), or the kubelet or containerd of real
// node n — waits until it is gone, keeps it down for down, and starts it
// again (Respawn). It returns the PID it killed. A node's kubelet and
// containerd are never both down: the survivor's mount namespace is the
// one the restarted process joins.
func (l *Lab) KillAndRestart(ctx context.Context, c *Cluster, n *Node, name string, down time.Duration) (int, error) {
	p, err := l.Process(c, n, name)
	if err != nil {
		return 0, err
	}
	var old *Proc
	if n != nil && name == ProcKubelet && n.Kubelet != nil && n.Kubelet.Pid() == p.PID {
		old = n.Kubelet
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		return 0, fmt.Errorf("kill %s (pid %d): %w", name, p.PID, err)
	}
	if old != nil {
		<-old.Done()
	} else if !waitGone(p.PID, 10*time.Second) {
		return p.PID, fmt.Errorf("%s (pid %d) did not exit on SIGKILL", name, p.PID)
	}
	select {
	case <-time.After(down):
	case <-ctx.Done():
	}
	_, err = l.Respawn(p)
	return p.PID, err
}

// labProcByComm finds the one process named comm inside the lab namespace
// netns.
func labProcByComm(netns, comm string) (int, error) {
	ino := netnsInode(netns)
	if ino == 0 {
		return 0, fmt.Errorf("netns %s not found", netns)
	}
	pids, err := procsInNetNS(map[uint64]bool{ino: true})
	if err != nil {
		return 0, err
	}
	var found []int
	for _, pid := range pids {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if err == nil && strings.TrimSpace(string(data)) == comm {
			found = append(found, pid)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("no %s running in %s", comm, netns)
	case 1:
		return found[0], nil
	}
	return 0, fmt.Errorf("%d processes named %s in %s: %v", len(found), comm, netns, found)
}

// procStrings reads a NUL-separated /proc/<pid>/<file> (cmdline, environ).
func procStrings(pid int, file string) ([]string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + file)
	if err != nil {
		return nil, fmt.Errorf("read %s of pid %d: %w", file, pid, err)
	}
	var out []string
	for _, f := range bytes.Split(bytes.TrimRight(data, "\x00"), []byte{0}) {
		out = append(out, string(f))
	}
	if len(out) == 0 || out[0] == "" {
		return nil, errors.New("empty " + file + " of pid " + strconv.Itoa(pid))
	}
	return out, nil
}

// UnderlayPort is the name of node n's port on the underlay bridge (in
// the namespace Names.Underlay()); setting it down cuts the node's
// underlay link the way a pulled cable does, without touching the node's
// own addresses and routes.
func (l *Lab) UnderlayPort(n *Node) string {
	return fmt.Sprintf("c%dn%d", n.Cluster.Index, n.Index)
}

// BPFFSBase is the directory under which every node's bpffs root lives.
func (l *Lab) BPFFSBase() string { return l.bpfBase }

// ApplyPodmeshRelease installs another podmesh release on cluster c the way
// a user upgrades or downgrades: the cluster's overlay (as InstallPodmesh
// writes it) over the manifests in baseDir (a release's daemonset/base),
// with the agent and clustermesh-apiserver images given, applied with
// kubectl apply -k; it waits until both are rolled out. Nodes must hold
// the images (Options.Images lists every archive they import). Not safe
// concurrently with InstallPodmesh or SwitchRoutingMode.
func (l *Lab) ApplyPodmeshRelease(ctx context.Context, c *Cluster, baseDir, agentRef, apiserverRef string) error {
	base := filepath.Join(l.StateDir, "podmesh", "base")
	if err := os.RemoveAll(base); err != nil {
		return err
	}
	if err := os.CopyFS(base, os.DirFS(baseDir)); err != nil {
		return fmt.Errorf("copy %s: %w", baseDir, err)
	}
	saved := l.opts.Images
	l.opts.Images = ImageSet{{Name: "podmesh-agent", Ref: agentRef}, {Name: "clustermesh-apiserver", Ref: apiserverRef}}
	overlay, err := l.writeOverlay(c)
	l.opts.Images = saved
	if err != nil {
		return err
	}
	if out, err := l.Kubectl(ctx, c, "apply", "-k", overlay); err != nil {
		return fmt.Errorf("cluster %s: kubectl apply -k (agent %s, clustermesh-apiserver %s): %w: %s", c.Name, agentRef, apiserverRef, err, out)
	}
	return l.WaitPodmeshRolledOut(ctx, c, 3*time.Minute)
}

// SaveLogs copies the lab's logs into dst before the lab goes (Close
// removes them): the control planes', kubelets', containerd's and
// kube-proxy's logs (logs/) and every real node's pod logs (the
// clustermesh-apiserver's, the agents', CoreDNS's, under
// pod-logs/<node>/). A long run's findings are then explained from the
// logs of the lab that produced them. Call it again and again during a run
// to keep the logs of pods that are deleted (the kubelet removes a pod's
// logs with it); a file whose copy has its size is not copied again.
func (l *Lab) SaveLogs(dst string) error {
	trees := map[string]string{filepath.Join(l.StateDir, "logs"): dst}
	for _, n := range l.Nodes() {
		trees[filepath.Join(l.StateDir, "nodes", n.Name, "pod-logs")] = filepath.Join(dst, "pod-logs", n.Name)
	}
	var errs []error
	for src, to := range trees {
		errs = append(errs, copyRegularFiles(src, to))
	}
	return errors.Join(errs...)
}

// copyRegularFiles copies the regular files below src to the same paths
// below dst (a missing src is nothing to copy).
func copyRegularFiles(src, dst string) error {
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		if fi, err := d.Info(); err == nil {
			if have, err := os.Stat(to); err == nil && have.Size() == fi.Size() {
				return nil // logs only grow: copied already
			}
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, data, 0o644)
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("copy logs from %s: %w", src, err)
	}
	return nil
}
