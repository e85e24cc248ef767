package lab

import (
	"context"
	"fmt"
	"net/netip"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReadyPodRefs returns the Ready pods of namespace ns in cluster c that
// match the label selector, by name, as PodRefs whose NetNS is the pod's
// own network namespace (found by its cgroup), so probes and DNS queries
// start inside the real pod.
func (l *Lab) ReadyPodRefs(ctx context.Context, c *Cluster, ns, selector string) ([]PodRef, error) {
	list, err := c.Kube.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: list pods %s in %s: %w", c.Name, selector, ns, err)
	}
	sort.Slice(list.Items, func(a, b int) bool { return list.Items[a].Name < list.Items[b].Name })
	var out []PodRef
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil || !podReady(&p) {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			return nil, fmt.Errorf("pod %s/%s: IP %q: %w", c.Name, p.Name, p.Status.PodIP, err)
		}
		netns, err := podNetNS(string(p.UID))
		if err != nil {
			return nil, fmt.Errorf("pod %s/%s: %w", c.Name, p.Name, err)
		}
		out = append(out, PodRef{Cluster: c.Name, Name: p.Name, NetNS: netns, IP: ip})
	}
	return out, nil
}
