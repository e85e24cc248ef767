package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
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

// Processes KillAndRestart knows how to find.
const (
	ProcEtcd          = "etcd"           // a cluster's etcd (control plane)
	ProcKubeAPIServer = "kube-apiserver" // a cluster's kube-apiserver
	ProcKubelet       = "kubelet"        // a real node's kubelet
	ProcContainerd    = "containerd"     // a real node's containerd
)

// KillAndRestart SIGKILLs one process of the lab — etcd or kube-apiserver of
// cluster c's control plane (n nil), or the kubelet or containerd of real
// node n — waits until it is gone, keeps it down for down, and starts it
// again with the same argv and environment in the same network (and, for a
// node's processes, mount) namespace. It returns the PID it killed. A
// node's kubelet and containerd are never both down: the survivor's mount
// namespace is the one the restarted process joins.
func (l *Lab) KillAndRestart(ctx context.Context, c *Cluster, n *Node, name string, down time.Duration) (int, error) {
	netns := c.NetNS
	if n != nil {
		netns = n.NetNS
	}
	pid, err := labProcByComm(netns, name)
	if err != nil {
		return 0, err
	}
	argv, err := procStrings(pid, "cmdline")
	if err != nil {
		return 0, err
	}
	env, err := procStrings(pid, "environ")
	if err != nil {
		return 0, err
	}
	var logPath string
	switch {
	case n == nil && (name == ProcEtcd || name == ProcKubeAPIServer):
		logPath = l.logPath("chaos-" + c.Name + "-" + name)
	case n != nil && name == ProcKubelet:
		logPath = n.LogPath
	case n != nil && name == ProcContainerd:
		logPath = l.logPath("containerd-" + n.Name)
	default:
		return 0, fmt.Errorf("KillAndRestart: %s is not a process of a %s", name, map[bool]string{true: "node", false: "control plane"}[n != nil])
	}
	if n != nil {
		// The node's private mount namespace lives on in the survivor.
		other := ProcContainerd
		if name == ProcContainerd {
			other = ProcKubelet
		}
		survivor, err := labProcByComm(netns, other)
		if err != nil {
			return 0, fmt.Errorf("node %s: no %s to take the mount namespace from: %w", n.Name, other, err)
		}
		argv = append([]string{"nsenter", "--mount=/proc/" + strconv.Itoa(survivor) + "/ns/mnt", "--"}, argv...)
	}
	var old *Proc
	if n != nil && name == ProcKubelet {
		old = n.Kubelet
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return 0, fmt.Errorf("kill %s (pid %d): %w", name, pid, err)
	}
	if old != nil && old.Pid() == pid {
		<-old.Done()
	} else if !waitGone(pid, 10*time.Second) {
		return pid, fmt.Errorf("%s (pid %d) did not exit on SIGKILL", name, pid)
	}
	select {
	case <-time.After(down):
	case <-ctx.Done():
	}
	p, err := startProc(l.log, "chaos-"+name, netns, logPath, env, argv...)
	if err != nil {
		return pid, err
	}
	if old != nil {
		l.mu.Lock()
		n.Kubelet = p
		l.mu.Unlock()
	}
	return pid, nil
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
