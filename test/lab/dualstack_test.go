package lab_test

import (
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/test/lab"
)

// TestMeshDualStack runs 2 dual-stack real clusters × 2 nodes (IPv4 and
// IPv6 service ranges in kube-apiserver, both pod CIDRs on every Node, the
// CNI's host-local ranges and kube-proxy's cluster CIDRs for both families;
// the underlay stays IPv4): in the tunnel modes every echo pod reaches every
// echo pod of the other cluster over both families, the receiver seeing the
// sender's own address, and the kernel (routes, and the ipcache in ebpf
// mode) holds the IPv6 node CIDRs next to the IPv4 ones. Native mode is left
// out: it would need IPv6 routes via IPv4 next hops, which Linux refuses
// ("IPv6 does not support RTA_VIA attribute"); native dual-stack needs an
// IPv6 underlay.
func TestMeshDualStack(t *testing.T) {
	testutils.RequireRoot(t)
	o := realLabOptions(t)
	o.DualStack = true
	ctx := withTimeout(t, 12*time.Minute)
	t0 := time.Now()
	l := upLab(t, ctx, o, lab.Topology{Clusters: 2, Nodes: 2, Pods: 1})
	t.Logf("dual-stack real lab up (2 clusters x 2 nodes, 1 echo pod per node) in %.1fs", time.Since(t0).Seconds())
	for _, mode := range []string{lab.ModeEBPF, lab.ModeVXLAN} {
		if mode != lab.ModeEBPF {
			if err := l.SwitchRoutingMode(ctx, mode); err != nil {
				t.Fatal(err)
			}
		}
		t.Run(mode, func(t *testing.T) {
			for _, n := range l.Nodes() {
				if err := l.CheckNode(ctx, n, l.Remotes(n)); err != nil {
					t.Fatal(err)
				}
			}
			n := l.Cluster(1).NodeList()[0]
			routes, err := lab.PodmeshRoutes(n.NetNS)
			if err != nil {
				t.Fatal(err)
			}
			if mode == lab.ModeEBPF {
				// One route for the remote cluster's IPv6 range; the nodes'
				// CIDRs are in the ipcache.
				c6 := lab.ClusterPodCIDR6(2)
				r, ok := routes[c6]
				if !ok {
					t.Fatalf("%s: no route to c2's IPv6 pod range %s", n.Name, c6)
				}
				t.Logf("%s: %s via %s dev %s mtu %d", n.Name, r.Prefix, r.Via, r.Dev, r.MTU)
				cache, err := lab.ReadIPCache(n.BPFRoot)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range l.Cluster(2).NodeList() {
					if e, ok := cache[m.PodCIDR6]; !ok || e.TunnelEndpoint != m.IP {
						t.Fatalf("%s: ipcache has no %s -> %s for %s (have %+v)", n.Name, m.PodCIDR6, m.IP, m.Name, e)
					}
				}
			} else {
				for _, m := range l.Cluster(2).NodeList() {
					r, ok := routes[m.PodCIDR6]
					if !ok {
						t.Fatalf("%s: no route to %s's IPv6 pod CIDR %s", n.Name, m.Name, m.PodCIDR6)
					}
					t.Logf("%s: %s via %s dev %s mtu %d", n.Name, r.Prefix, r.Via, r.Dev, r.MTU)
				}
			}
			pods, err := l.KubePodRefs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(pods) != 4 {
				t.Fatalf("%d Ready echo pods, want 4", len(pods))
			}
			for _, p := range pods {
				if !p.IP6.IsValid() {
					t.Fatalf("echo pod %s has no IPv6 address", p)
				}
				if m := l.Cluster(map[string]int{"c1": 1, "c2": 2}[p.Cluster]).Node(p.Node); m == nil || !m.PodCIDR6.Contains(p.IP6) {
					t.Fatalf("echo pod %s: IPv6 %s outside its node's IPv6 pod CIDR", p, p.IP6)
				}
			}
			matrixOK(t, ctx, pods)
			matrixOK(t, ctx, lab.AsIPv6(pods))
		})
	}
}
