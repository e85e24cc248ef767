package lab

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KubeTools are the binaries a real lab runs from its bin directory.
var KubeTools = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

// KubeNodeMemory sums the proportional set size (PSS) of a real node's
// processes: kubelet, containerd, kube-proxy, shims, and its pods' containers.
func (l *Lab) KubeNodeMemory(n *Node) (int64, error) {
	pids, err := cgroupProcs(l.opts.Prefix, n.Name)
	if err != nil {
		return 0, err
	}
	nsPids, err := procsInNetNS(map[uint64]bool{netnsInode(n.NetNS): true})
	if err != nil {
		return 0, err
	}
	return sumPSS(append(pids, nsPids...)), nil
}

// ControlPlaneMemory sums the PSS of the processes in the cluster's
// control-plane namespace (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler).
func (l *Lab) ControlPlaneMemory(c *Cluster) (int64, error) {
	pids, err := procsInNetNS(map[uint64]bool{netnsInode(c.NetNS): true})
	if err != nil {
		return 0, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	return sumPSS(pids), nil
}

// netnsInode returns the nsfs inode of a named namespace (0 if missing).
func netnsInode(name string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(NetNSPath(name), &st); err != nil {
		return 0
	}
	return st.Ino
}

// sumPSS adds up the Pss of the processes (bytes), each counted once;
// processes that exited meanwhile count nothing.
func sumPSS(pids []int) int64 {
	seen := map[int]bool{}
	var total int64
	for _, pid := range pids {
		if seen[pid] {
			continue
		}
		seen[pid] = true
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}
