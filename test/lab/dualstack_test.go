package lab_test

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

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
	t.Run("ServiceGetsBothFamilies", func(t *testing.T) { testDualStackService(t, ctx, l) })
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

// The control plane and kube-proxy are dual-stack: a Service that requires
// both families gets an IPv4 and an IPv6 cluster IP (from the IPv6 service
// range), and kube-proxy programs the IPv6 one into every node's ip6tables.
func testDualStackService(t *testing.T, ctx context.Context, l *lab.Lab) {
	c := l.Cluster(1)
	policy := corev1.IPFamilyPolicyRequireDualStack
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "echo-dual", Namespace: metav1.NamespaceDefault},
		Spec: corev1.ServiceSpec{
			IPFamilyPolicy: &policy,
			Selector:       map[string]string{"app": lab.EchoApp},
			Ports:          []corev1.ServicePort{{Name: "tcp", Port: lab.ServeTCPPort, TargetPort: intstr.FromInt32(lab.ServeTCPPort)}},
		},
	}
	if err := l.ApplyObject(ctx, c, "echo-dual", svc); err != nil {
		t.Fatal(err)
	}
	got, err := c.Kube.Client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, svc.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var v6 netip.Addr
	for _, s := range got.Spec.ClusterIPs {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is6() {
			v6 = ip
		}
	}
	if len(got.Spec.ClusterIPs) != 2 || !lab.ServiceCIDR6.Contains(v6) {
		t.Fatalf("service %s: cluster IPs %v, want an IPv4 one and an IPv6 one in %s", svc.Name, got.Spec.ClusterIPs, lab.ServiceCIDR6)
	}
	for _, n := range c.NodeList() {
		eventually(t, time.Minute, "kube-proxy on "+n.Name+" programs "+v6.String(), func() error {
			out, err := exec.CommandContext(ctx, "nsenter", "--net="+lab.NetNSPath(n.NetNS), "ip6tables-save", "-t", "nat").CombinedOutput()
			if err != nil {
				return fmt.Errorf("ip6tables-save: %v: %s", err, out)
			}
			if !strings.Contains(string(out), v6.String()) {
				return fmt.Errorf("no rule for %s in the node's ip6tables nat table", v6)
			}
			return nil
		})
	}
	t.Logf("service %s: cluster IPs %v; kube-proxy programmed %s on every node of %s", svc.Name, got.Spec.ClusterIPs, v6, c.Name)
}
