package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/podmesh/podmesh/test/kubetest"
)

// Topology is the shape of a standard lab: Clusters × Nodes real nodes,
// Pods echo pods per node, every cluster meshed with every other.
type Topology struct {
	Clusters, Nodes, Pods int
	// NoMesh installs no podmesh: real clusters and echo pods only (tests
	// of the lab itself).
	NoMesh bool
}

// Up builds a standard lab: per cluster a control plane and Nodes real
// nodes, podmesh installed from daemonset/ (unless NoMesh), and an echo
// Deployment of Nodes×Pods replicas; it returns once the mesh has converged
// (every agent ready for every remote, every remote prefix routed on every
// node). On error everything created is removed again.
func Up(ctx context.Context, o Options, t Topology) (l *Lab, err error) {
	if t.Clusters < 1 || t.Clusters > MaxClusters || t.Nodes < 1 || t.Nodes > MaxNodes || t.Pods < 0 || t.Pods > MaxPods {
		return nil, fmt.Errorf("topology %dx%dx%d out of range", t.Clusters, t.Nodes, t.Pods)
	}
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
	t0 := time.Now()
	if !t.NoMesh {
		if err := parallel(t.Clusters, func(k int) error { return l.InstallPodmesh(ctx, clusters[k]) }); err != nil {
			return nil, err
		}
	}
	if t.Pods > 0 {
		if err := parallel(t.Clusters, func(k int) error { return l.DeployEcho(ctx, clusters[k], t.Nodes*t.Pods) }); err != nil {
			return nil, err
		}
	}
	if t.NoMesh {
		return l, l.recordLayout()
	}
	l.progress("podmesh installed; waiting for the mesh to converge")
	if err := l.WaitConverged(ctx, 3*time.Minute); err != nil {
		return nil, err
	}
	l.InstallConverged = time.Since(t0)
	l.progress("mesh converged %.1fs after the install started", l.InstallConverged.Seconds())
	return l, l.recordLayout()
}

// checkBinaries fails early, with a hint, when a binary the lab runs is
// missing from binDir (default: $PODMESH_BIN or the checkout's bin/).
func checkBinaries(binDir string, names []string) error {
	if binDir == "" {
		var err error
		if binDir, err = kubetest.BinDir(); err != nil {
			return err
		}
	}
	var missing []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(binDir, n)); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing in %s: %s (make tools builds them)", binDir, strings.Join(missing, ", "))
	}
	return nil
}

// parallel runs f(0..n-1) concurrently and joins the errors.
func parallel(n int, f func(k int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for k := range n {
		wg.Go(func() { errs[k] = f(k) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// recordLayout writes the lab's shape into its state file for `status`.
func (l *Lab) recordLayout() error {
	lay := &Layout{RoutingMode: l.RoutingMode(), BinDir: l.opts.BinDir}
	for _, c := range l.Clusters() {
		cl := ClusterLayout{Name: c.Name, ID: c.ID, NetNS: c.NetNS, PodCIDRs: []string{joinPrefixes(c.PodCIDRs)},
			APIServer: c.Kube.URL, Kubeconfig: c.Kube.Kubeconfig, MeshEndpoints: c.MeshEndpoints()}
		for _, n := range c.NodeList() {
			cl.Nodes = append(cl.Nodes, NodeLayout{Name: n.Name, NetNS: n.NetNS, IP: n.IP.String(), PodCIDR: joinPrefixes(n.PodCIDRs()),
				StatusListen: n.StatusAddr(), BPFRoot: n.BPFRoot, KubeletLog: n.LogPath})
		}
		lay.Clusters = append(lay.Clusters, cl)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state.Layout = lay
	l.state.Ready = true
	return writeState(l.StateDir, l.state)
}
