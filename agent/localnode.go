package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// localNode is what the agent needs to know about its own node.
type localNode struct {
	Name        string
	InternalIPs []netip.Addr
	PodCIDRs    []netip.Prefix
	// TunnelIP is the tunnel source: the first InternalIP.
	TunnelIP netip.Addr
}

// kubeClient builds a client for the local cluster: from kubeconfig, or
// in-cluster when it is empty.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "podmesh-agent"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, nil
}

// nodeFromObject extracts the local node's addresses and pod CIDRs.
func nodeFromObject(n *corev1.Node) (*localNode, error) {
	ln := &localNode{Name: n.Name}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			return nil, fmt.Errorf("node %s: InternalIP %q: %w", n.Name, a.Address, err)
		}
		ln.InternalIPs = append(ln.InternalIPs, ip.Unmap())
	}
	if len(ln.InternalIPs) == 0 {
		return nil, fmt.Errorf("node %s has no InternalIP yet", n.Name)
	}
	ln.TunnelIP = ln.InternalIPs[0]
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("node %s: pod CIDR %q: %w", n.Name, c, err)
		}
		ln.PodCIDRs = append(ln.PodCIDRs, p.Masked())
	}
	return ln, nil
}

// waitLocalNode reads the node until it exists with an InternalIP, retrying
// with backoff, or ctx is done.
func waitLocalNode(ctx context.Context, cs kubernetes.Interface, name string, localCIDRs []netip.Prefix, log logrus.FieldLogger) (*localNode, error) {
	var ln *localNode
	var lastErr error
	bo := kvstore.NewBackoff(500*time.Millisecond, 30*time.Second)
	err := wait.ExponentialBackoffWithContext(ctx, bo, func(ctx context.Context) (bool, error) {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			ln, err = nodeFromObject(n)
		}
		if err != nil {
			lastErr = err
			log.WithError(err).WithField("node", name).Warn("Local node not usable yet; retrying")
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("read local node %s: %w", name, lastErr), err)
	}
	for _, p := range ln.PodCIDRs {
		if !meshapi.PrefixWithin(p, localCIDRs) {
			log.WithFields(logrus.Fields{"node": name, "prefix": p.String()}).Warn("Node pod CIDR is outside --pod-cidrs")
		}
	}
	return ln, nil
}
