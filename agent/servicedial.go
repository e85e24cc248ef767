package main

import (
	"context"
	"fmt"
	"net"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// serviceDialer dials host:port for the cache client. A host that names a
// Service (<name>.<namespace>.svc, optionally followed by the cluster
// domain) is resolved to the Service's ClusterIP through the Kubernetes
// API, so a host-network agent reaches its cache without cluster DNS (which
// may not run, or may itself depend on the network the agent sets up); TLS
// still verifies the Service name. Any other host is dialled as it is.
func serviceDialer(kube kubernetes.Interface) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		if name, namespace, ok := serviceName(host); ok {
			svc, err := kube.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("resolve Service %s/%s: %w", namespace, name, err)
			}
			ip := svc.Spec.ClusterIP
			if ip == "" || ip == "None" {
				return nil, fmt.Errorf("resolve Service %s/%s: it has no ClusterIP", namespace, name)
			}
			addr = net.JoinHostPort(ip, port)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// serviceName splits <name>.<namespace>.svc[.<domain>...].
func serviceName(host string) (name, namespace string, ok bool) {
	parts := strings.Split(strings.TrimSuffix(host, "."), ".")
	if len(parts) < 3 || parts[2] != "svc" || parts[0] == "" || parts[1] == "" {
		return "", "", false
	}
	return parts[0], parts[1], true
}
