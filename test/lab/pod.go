package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// PodSpec describes a pod to add; a zero IP takes the addressing plan's.
type PodSpec struct {
	Index int
	// IP of the pod. It may lie outside the node's pod CIDR (inside the
	// cluster's), as with cloud IPAM; podmesh then publishes it as a /32.
	IP netip.Addr
	// IP6 is the pod's IPv6 address in a dual-stack lab; zero takes the
	// plan's.
	IP6 netip.Addr
}

// AddPod plays scheduler, kubelet and CNI for one pod on node n: it creates
// the Pod object bound to the node, the pod's namespace with eth0 (the pod
// IP/32, a default route via the link-local gateway), the node side of the
// veth with a /32 route to the pod, starts the echo server in the pod and,
// once it answers, reports the pod Running with its IP.
func (l *Lab) AddPod(ctx context.Context, n *Node, spec PodSpec) (*Pod, error) {
	k := spec.Index
	if k < 1 || k > MaxPods {
		return nil, fmt.Errorf("pod index %d: want 1..%d", k, MaxPods)
	}
	c := n.Cluster
	p := &Pod{
		Node:  n,
		Index: k,
		Name:  PodName(n.Index, k),
		NetNS: l.Names.Pod(c.Index, n.Index, k),
		IP:    spec.IP,
	}
	if !p.IP.IsValid() {
		p.IP = PodIP(c.Index, n.Index, k)
	}
	if l.opts.DualStack {
		p.IP6 = spec.IP6
		if !p.IP6.IsValid() {
			p.IP6 = PodIP6(c.Index, n.Index, k)
		}
	}
	l.mu.Lock()
	if _, ok := n.Pods[k]; ok {
		l.mu.Unlock()
		return nil, fmt.Errorf("pod %s exists", p)
	}
	n.Pods[k] = p
	l.mu.Unlock()

	kube := c.KubeServer()
	owned := c.ownsKube()
	var err error
	var podObj *corev1.Pod
	if owned {
		if podObj, err = createPod(ctx, kube.Client, p.Name, n.Name); err != nil {
			return nil, err
		}
	}
	if err := l.plumbPod(ctx, p); err != nil {
		return nil, err
	}
	if err := l.startServe(ctx, p); err != nil {
		return nil, err
	}
	if owned {
		p.ReportedAt = time.Now()
		if err := reportPodRunning(ctx, kube.Client, podObj, p.IPs(), n.IP); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// startServe starts the pod's echo server and waits until the node reaches
// it over the veth: this proves the CNI part and that the server listens,
// before the pod is reported Running.
func (l *Lab) startServe(ctx context.Context, p *Pod) error {
	n := p.Node
	var err error
	if p.Serve, err = startProc(l.log, "serve-"+p.NetNS, p.NetNS, l.logPath("serve-"+n.Cluster.Name+"-"+p.Name), nil,
		l.Bin("podmesh-lab"), "serve",
		"--tcp="+net.JoinHostPort("", itoa(ServeTCPPort)),
		"--udp="+net.JoinHostPort("", itoa(ServeUDPPort)),
	); err != nil {
		return err
	}
	return waitFor(ctx, 20*time.Second, 20*time.Millisecond, "echo server in "+p.String(), func() (bool, error) {
		if exited, err := p.Serve.Exited(); exited {
			return false, permanent{fmt.Errorf("echo server exited: %v: %s", err, TailLog(p.Serve.LogPath, 5))}
		}
		res, err := Probe(ctx, n.NetNS, netip.AddrPortFrom(p.IP, ServeTCPPort), time.Second)
		if err != nil {
			return false, err
		}
		if res.Seen.Addr() != n.IP {
			return false, fmt.Errorf("pod saw source %s, want the node's %s", res.Seen, n.IP)
		}
		return true, nil
	})
}

// plumbPod is the CNI ADD: pod namespace, veth, addresses, routes and static
// neighbours (no ARP and no proxy ARP needed, nothing on the node side but
// a /32 route).
func (l *Lab) plumbPod(ctx context.Context, p *Pod) error {
	n := p.Node
	i, j, k := n.Cluster.Index, n.Index, p.Index
	if err := addNetNS(ctx, p.NetNS); err != nil {
		return err
	}
	hostIf := fmt.Sprintf("vp%d", k)
	hostMAC, podMAC := mac(3, i, j, k), mac(4, i, j, k)
	nodeCmds := []string{
		fmt.Sprintf("link add %s address %s type veth peer name eth0 address %s netns %s", hostIf, hostMAC, podMAC, p.NetNS),
		fmt.Sprintf("link set %s up", hostIf),
		fmt.Sprintf("route add %s/32 dev %s scope link proto static", p.IP, hostIf),
		fmt.Sprintf("neigh replace %s lladdr %s dev %s nud permanent", p.IP, podMAC, hostIf),
	}
	podCmds := []string{
		"link set eth0 up",
		fmt.Sprintf("addr add %s/32 dev eth0", p.IP),
		fmt.Sprintf("neigh replace %s lladdr %s dev eth0 nud permanent", PodGateway, hostMAC),
		fmt.Sprintf("route add default via %s dev eth0 onlink", PodGateway),
	}
	if p.IP6.IsValid() {
		// The same shape for IPv6: the pod's /128 with no DAD delay, a
		// default route via fe80::1 (link-local, so no onlink needed) with
		// a permanent neighbour entry, and the node's /128 route back.
		nodeCmds = append(nodeCmds,
			fmt.Sprintf("route add %s/128 dev %s proto static", p.IP6, hostIf),
			fmt.Sprintf("neigh replace %s lladdr %s dev %s nud permanent", p.IP6, podMAC, hostIf),
		)
		podCmds = append(podCmds,
			fmt.Sprintf("addr add %s/128 dev eth0 nodad", p.IP6),
			fmt.Sprintf("neigh replace %s lladdr %s dev eth0 nud permanent", PodGateway6, hostMAC),
			fmt.Sprintf("route add ::/0 via %s dev eth0", PodGateway6),
		)
	}
	if err := ipBatch(ctx, n.NetNS, nodeCmds...); err != nil {
		return err
	}
	return ipBatch(ctx, p.NetNS, podCmds...)
}

// IPs are the pod's addresses: IPv4, then IPv6 in a dual-stack lab.
func (p *Pod) IPs() []netip.Addr {
	if p.IP6.IsValid() {
		return []netip.Addr{p.IP, p.IP6}
	}
	return []netip.Addr{p.IP}
}

// unplumbPod is the CNI DEL: it deletes the node side of the pod's veth
// (which takes the pod's eth0 and the node's /32 route with it at once)
// and the pod's namespace.
func (l *Lab) unplumbPod(ctx context.Context, p *Pod) error {
	err := ipBatch(ctx, p.Node.NetNS, fmt.Sprintf("link del vp%d", p.Index))
	return errors.Join(err, delNetNS(p.NetNS))
}

// RemovePod deletes the Pod object (as an API delete with grace 0), stops
// the echo server and removes the pod's namespace (which removes the veth
// and the node's route to it: the CNI DEL). DeletedAt is set to the moment
// just before the API delete.
func (l *Lab) RemovePod(ctx context.Context, p *Pod) error {
	c := p.Node.Cluster
	var errs []error
	if kube := c.KubeServer(); c.ownsKube() {
		p.DeletedAt = time.Now()
		errs = append(errs, deletePod(ctx, kube.Client, p.Name))
	}
	errs = append(errs, p.Serve.Stop(2*time.Second))
	errs = append(errs, l.unplumbPod(ctx, p))
	l.mu.Lock()
	delete(p.Node.Pods, p.Index)
	l.mu.Unlock()
	return errors.Join(errs...)
}
