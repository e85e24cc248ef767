package soak

import (
	"context"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/test/lab"
)

// ownership samples every node's podmesh routes and ipcache while faults
// run and records any entry for a prefix that is not a remote cluster's,
// or whose tunnel endpoint or cluster ID is not that cluster's.
type ownership struct {
	l      *lab.Lab
	cancel context.CancelFunc
	done   chan struct{}

	// mu protects samples, readErrs and violations.
	mu         sync.Mutex
	samples    int
	readErrs   int
	violations []string
}

// maxViolations bounds what a report lists.
const maxViolations = 20

func startOwnership(ctx context.Context, l *lab.Lab, every time.Duration) *ownership {
	ctx, cancel := context.WithCancel(ctx)
	o := &ownership{l: l, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		for sleepCtx(ctx, every) == nil {
			o.sample()
		}
	}()
	return o
}

func (o *ownership) stop() (samples, readErrs int, violations []string) {
	o.cancel()
	<-o.done
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.samples, o.readErrs, slices.Clone(o.violations)
}

func (o *ownership) sample() {
	clusters := o.l.Clusters()
	owner := func(p netip.Prefix) *lab.Cluster {
		for _, c := range clusters {
			for _, cidr := range c.PodCIDRs {
				if cidr.Bits() <= p.Bits() && cidr.Contains(p.Addr()) {
					return c
				}
			}
		}
		return nil
	}
	for _, n := range o.l.Nodes() {
		var bad []string
		routes, err := lab.PodmeshRoutes(n.NetNS)
		if err != nil {
			o.count(0, 1, nil)
			continue
		}
		for p := range routes {
			if c := owner(p); c == nil || c == n.Cluster {
				bad = append(bad, fmt.Sprintf("node %s: route %s owned by no remote cluster", n.Name, p))
			}
		}
		if n.Mode == lab.ModeEBPF {
			cache, err := lab.ReadIPCache(n.BPFRoot)
			if err != nil {
				o.count(0, 1, nil) // an agent replacing its pins
				continue
			}
			for p, e := range cache {
				c := owner(p)
				switch {
				case c == nil || c == n.Cluster:
					bad = append(bad, fmt.Sprintf("node %s: ipcache %s owned by no remote cluster", n.Name, p))
				case e.ClusterID != c.ID:
					bad = append(bad, fmt.Sprintf("node %s: ipcache %s has cluster ID %d, owner %s is %d", n.Name, p, e.ClusterID, c.Name, c.ID))
				case !slices.ContainsFunc(c.NodeList(), func(m *lab.Node) bool { return m.IP == e.TunnelEndpoint }):
					bad = append(bad, fmt.Sprintf("node %s: ipcache %s -> %s, not a node of owner %s", n.Name, p, e.TunnelEndpoint, c.Name))
				}
			}
		}
		o.count(1, 0, bad)
	}
}

func (o *ownership) count(samples, readErrs int, bad []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.samples += samples
	o.readErrs += readErrs
	for _, b := range bad {
		if len(o.violations) < maxViolations {
			o.violations = append(o.violations, time.Now().Format("15:04:05.000 ")+b)
		}
	}
}

// snapshot is what must be the same before and after a run: per node the
// non-veth links, the veth count (one per pod with its own network, which
// the check compares with the pods the API places on the node) and the
// pins under the agent's bpffs root; per cluster the EndpointSlices by
// service and manager.
type snapshot struct {
	links  map[string][]string // node -> non-veth link names
	veths  map[string]int      // node -> veth links
	pods   map[string]int      // node -> pods with their own network namespace
	pins   map[string][]string // node -> pinned paths
	slices map[string]map[string]int
}

func takeSnapshot(ctx context.Context, l *lab.Lab) (*snapshot, error) {
	s := &snapshot{links: map[string][]string{}, veths: map[string]int{}, pods: map[string]int{},
		pins: map[string][]string{}, slices: map[string]map[string]int{}}
	for _, n := range l.Nodes() {
		names, veths, err := nodeLinks(n.NetNS)
		if err != nil {
			return nil, err
		}
		s.links[n.Name], s.veths[n.Name] = names, veths
		pins, err := pinnedPaths(n.BPFRoot)
		if err != nil {
			return nil, err
		}
		s.pins[n.Name] = pins
	}
	for _, c := range l.Clusters() {
		pods, err := c.Kube.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("cluster %s: list pods: %w", c.Name, err)
		}
		for _, p := range pods.Items {
			if !p.Spec.HostNetwork && p.Spec.NodeName != "" && p.DeletionTimestamp == nil &&
				p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				s.pods[p.Spec.NodeName]++
			}
		}
		eps, err := c.Kube.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("cluster %s: list EndpointSlices: %w", c.Name, err)
		}
		m := map[string]int{}
		for _, e := range eps.Items {
			m[e.Namespace+"/"+e.Labels["kubernetes.io/service-name"]+" by "+e.Labels["endpointslice.kubernetes.io/managed-by"]]++
		}
		s.slices[c.Name] = m
	}
	return s, nil
}

func nodeLinks(ns string) (names []string, veths int, err error) {
	h, err := netns.GetFromPath(lab.NetNSPath(ns))
	if err != nil {
		return nil, 0, fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, 0, fmt.Errorf("netlink in %s: %w", ns, err)
	}
	defer nh.Close()
	links, err := nh.LinkList()
	if err != nil {
		return nil, 0, fmt.Errorf("list links in %s: %w", ns, err)
	}
	for _, lk := range links {
		if lk.Type() == "veth" && lk.Attrs().Name != "eth0" {
			veths++
			continue
		}
		names = append(names, lk.Attrs().Name)
	}
	sort.Strings(names)
	return names, veths, nil
}

func pinnedPaths(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, path)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk pins under %s: %w", root, err)
	}
	sort.Strings(out)
	return out, nil
}

// leaks compares the snapshot after a run with the one before and lists
// every difference: links, pins and EndpointSlices that appeared or went,
// veths without a pod.
func (before *snapshot) leaks(after *snapshot) []string {
	var out []string
	for node, want := range before.links {
		if got := after.links[node]; !slices.Equal(got, want) {
			out = append(out, fmt.Sprintf("node %s: links %v, before %v", node, got, want))
		}
		if got := after.pins[node]; !slices.Equal(got, before.pins[node]) {
			out = append(out, fmt.Sprintf("node %s: pins %v, before %v", node, got, before.pins[node]))
		}
		if after.veths[node] != after.pods[node] {
			out = append(out, fmt.Sprintf("node %s: %d pod veths for %d pods", node, after.veths[node], after.pods[node]))
		}
	}
	for c, want := range before.slices {
		if got := after.slices[c]; !maps.Equal(got, want) {
			out = append(out, fmt.Sprintf("cluster %s: EndpointSlices %v, before %v", c, got, want))
		}
	}
	return out
}

// waitNoLeaks polls until the lab shows no leak against before (pods
// replaced near the end may still be terminating) or timeout passes.
func waitNoLeaks(ctx context.Context, l *lab.Lab, before *snapshot, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		after, err := takeSnapshot(ctx, l)
		var leaks []string
		if err != nil {
			leaks = []string{err.Error()}
		} else {
			leaks = before.leaks(after)
		}
		if len(leaks) == 0 || time.Now().After(deadline) || sleepCtx(ctx, time.Second) != nil {
			return leaks
		}
	}
}

// describe joins a list for an error message.
func describe(items []string) string { return strings.Join(items, "\n  ") }
