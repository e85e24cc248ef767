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

// Topology is the shape of a standard lab: Clusters × Nodes × Pods, every
// cluster meshed with every other.
type Topology struct {
	Clusters, Nodes, Pods int
	// NoAgents leaves the agents stopped (tests of the scaffolding).
	NoAgents bool
	// NoMesh starts neither control planes nor agents: namespaces, links
	// and pods only (tests of the scaffolding without podmesh binaries).
	NoMesh bool
}

// Up builds a standard lab and waits until the mesh has converged (every
// agent ready for every remote, every remote pod CIDR routed on every node).
// On error everything created is removed again.
func Up(ctx context.Context, o Options, t Topology) (l *Lab, err error) {
	if t.Clusters < 1 || t.Clusters > MaxClusters || t.Nodes < 1 || t.Nodes > MaxNodes || t.Pods < 0 || t.Pods > MaxPods {
		return nil, fmt.Errorf("topology %dx%dx%d out of range", t.Clusters, t.Nodes, t.Pods)
	}
	if o.Kubelets {
		return upKube(ctx, o, t)
	}
	need := []string{"podmesh-lab"}
	if !t.NoMesh {
		need = append(need, "podmesh-agent", "clustermesh-apiserver")
	}
	if err := checkBinaries(o.BinDir, need); err != nil {
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
	l.progress("lab %s: %d clusters x %d nodes x %d pods, routing mode %s, state in %s",
		o.Prefix, t.Clusters, t.Nodes, t.Pods, l.RoutingMode(), l.StateDir)

	// Control planes start in parallel: kube-apiserver start-up dominates.
	clusters := make([]*Cluster, t.Clusters)
	if err := parallel(t.Clusters, func(k int) error {
		var err error
		clusters[k], err = l.AddCluster(ctx, ClusterSpec{Index: k + 1, NoKube: t.NoMesh})
		return err
	}); err != nil {
		return nil, err
	}
	if !t.NoMesh {
		if err := parallel(len(clusters), func(k int) error { return l.StartMesh(ctx, clusters[k], nil) }); err != nil {
			return nil, err
		}
		l.progress("clustermesh-apiservers ready")
	}
	for _, c := range clusters {
		if err := parallel(t.Nodes, func(j int) error {
			n, err := l.AddNode(ctx, c, j+1)
			if err != nil {
				return err
			}
			if !t.NoMesh {
				cfgs, err := l.MeshConfigs(c)
				if err != nil {
					return err
				}
				if err := l.WriteMeshConfig(n, cfgs); err != nil {
					return err
				}
			}
			for k := 1; k <= t.Pods; k++ {
				if _, err := l.AddPod(ctx, n, PodSpec{Index: k}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	l.progress("namespaces, links, Node and Pod objects ready")
	if t.NoMesh || t.NoAgents {
		return l, l.recordLayout()
	}
	for _, n := range l.Nodes() {
		if err := l.StartAgent(ctx, n); err != nil {
			return nil, err
		}
	}
	l.progress("agents started (%s mode); waiting for the mesh to converge", l.RoutingMode())
	t0 := time.Now()
	if err := l.WaitConverged(ctx, 3*time.Minute); err != nil {
		return nil, err
	}
	l.progress("mesh converged in %.1fs", time.Since(t0).Seconds())
	return l, l.recordLayout()
}

// checkBinaries fails early, with a hint, when a binary the lab runs is
// missing from binDir (default: the checkout's bin/).
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
		return fmt.Errorf("missing in %s: %s (build them: go build -o %s/<name> ./agent ./clustermesh-apiserver ./test/lab/cmd/podmesh-lab, or run test/lab/demo.sh)",
			binDir, strings.Join(missing, ", "), binDir)
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
	lay := &Layout{RoutingMode: l.RoutingMode(), Kubelets: l.opts.Kubelets, BinDir: l.opts.BinDir}
	for _, c := range l.Clusters() {
		cl := ClusterLayout{Name: c.Name, ID: c.ID, NetNS: c.NetNS, PodCIDRs: []string{joinPrefixes(c.PodCIDRs)}}
		if k := c.KubeServer(); k != nil {
			cl.APIServer, cl.Kubeconfig = k.URL, k.Kubeconfig
		}
		if c.Mesh != nil {
			cl.MeshEndpoint, cl.MeshHealth = c.MeshEndpoint(), c.MeshHealthURL()
		}
		for _, n := range c.NodeList() {
			nl := NodeLayout{Name: n.Name, NetNS: n.NetNS, IP: n.IP.String(), PodCIDR: n.PodCIDR.String(),
				StatusListen: n.StatusAddr(), ConfigDir: n.ConfigDir, BPFRoot: n.BPFRoot, AgentLog: n.LogPath}
			for _, p := range n.PodList() {
				pl := PodLayout{Name: p.Name, NetNS: p.NetNS, IP: p.IP.String()}
				if p.IP6.IsValid() {
					pl.IP6 = p.IP6.String()
				}
				nl.Pods = append(nl.Pods, pl)
			}
			cl.Nodes = append(cl.Nodes, nl)
		}
		lay.Clusters = append(lay.Clusters, cl)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state.Layout = lay
	l.state.Ready = true
	return writeState(l.StateDir, l.state)
}
