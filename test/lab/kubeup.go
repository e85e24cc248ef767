package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// KubeTools are the binaries a real lab runs from its bin directory.
var KubeTools = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

// upKube builds a real lab: per cluster a control plane, Nodes real nodes,
// podmesh installed from daemonset/, and an echo Deployment of
// Nodes×Pods replicas; it returns once the mesh has converged.
func upKube(ctx context.Context, o Options, t Topology) (l *Lab, err error) {
	if err := checkBinaries(o.BinDir, KubeTools); err != nil {
		return nil, err
	}
	if err := CheckInotify(t.Clusters, t.Nodes); err != nil {
		return nil, err
	}
	created, err := New(ctx, o)
	if err != nil {
		return nil, err
	}
	l = created
	// "return nil, err" below clears l before this runs: close created.
	defer func() {
		if err != nil {
			err = errors.Join(err, created.Close())
			l = nil
		}
	}()
	l.progress("lab %s: %d clusters x %d real nodes, %d echo pods per node, routing mode %s, state in %s",
		o.Prefix, t.Clusters, t.Nodes, t.Pods, l.RoutingMode(), l.StateDir)
	clusters := make([]*Cluster, t.Clusters)
	if err := parallel(t.Clusters, func(k int) error {
		var err error
		clusters[k], err = l.AddCluster(ctx, ClusterSpec{Index: k + 1})
		return err
	}); err != nil {
		return nil, err
	}
	if err := parallel(t.Clusters, func(k int) error {
		return parallel(t.Nodes, func(j int) error {
			_, err := l.AddKubeNode(ctx, clusters[k], j+1)
			return err
		})
	}); err != nil {
		return nil, err
	}
	l.progress("all %d nodes Ready", t.Clusters*t.Nodes)
	if t.NoMesh {
		return l, l.recordLayout()
	}
	t0 := time.Now()
	if err := parallel(t.Clusters, func(k int) error { return l.InstallPodmesh(ctx, clusters[k]) }); err != nil {
		return nil, err
	}
	if t.Pods > 0 {
		if err := parallel(t.Clusters, func(k int) error { return l.DeployEcho(ctx, clusters[k], t.Nodes*t.Pods) }); err != nil {
			return nil, err
		}
	}
	l.progress("podmesh installed; waiting for the mesh to converge")
	if err := l.WaitConverged(ctx, 3*time.Minute); err != nil {
		return nil, err
	}
	l.InstallConverged = time.Since(t0)
	l.progress("mesh converged %.1fs after the install started", l.InstallConverged.Seconds())
	return l, l.recordLayout()
}

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
