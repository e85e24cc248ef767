package soak

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podmesh/podmesh/test/lab"
)

// ExportedName is the clusterset name of the service every cluster
// exports: the echo pods, headless, so a lookup lists every echo pod of
// every cluster.
const ExportedName = lab.EchoApp + "." + metav1.NamespaceDefault + ".svc.clusterset.local"

// setupServices installs CoreDNS (daemonset/coredns and the lab's CoreDNS
// manifest, test/lab/testdata/coredns.yaml, with image) in every cluster,
// exports a headless Service of the echo pods from every cluster, and
// waits until every cluster resolves ExportedName to every echo pod. It
// returns each cluster's CoreDNS pod.
func setupServices(ctx context.Context, l *lab.Lab, repo, image string, eps []Endpoint) (map[string]Endpoint, error) {
	manifest, err := os.ReadFile(filepath.Join(repo, "test", "lab", "testdata", "coredns.yaml"))
	if err != nil {
		return nil, fmt.Errorf("CoreDNS manifest: %w", err)
	}
	path := filepath.Join(l.StateDir, "chaos-coredns.yaml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(manifest), "IMAGE", image)), 0o600); err != nil {
		return nil, err
	}
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: lab.EchoApp, Namespace: metav1.NamespaceDefault},
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Selector:  map[string]string{"app": lab.EchoApp},
			Ports:     []corev1.ServicePort{{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: lab.ServeTCPPort, TargetPort: intstr.FromInt32(lab.ServeTCPPort)}},
		},
	}
	export := map[string]any{
		"apiVersion": "multicluster.x-k8s.io/v1alpha1",
		"kind":       "ServiceExport",
		"metadata":   map[string]any{"name": lab.EchoApp, "namespace": metav1.NamespaceDefault},
	}
	dns := map[string]Endpoint{}
	for _, c := range l.Clusters() {
		for _, args := range [][]string{{"apply", "-k", filepath.Join(repo, "daemonset", "coredns")}, {"apply", "-f", path}} {
			if out, err := l.Kubectl(ctx, c, args...); err != nil {
				return nil, fmt.Errorf("cluster %s: kubectl %s: %w: %s", c.Name, strings.Join(args, " "), err, out)
			}
		}
		if err := l.ApplyObject(ctx, c, "chaos-echo-service", svc); err != nil {
			return nil, err
		}
		if err := l.ApplyObject(ctx, c, "chaos-echo-export", export); err != nil {
			return nil, err
		}
	}
	for _, c := range l.Clusters() {
		if out, err := l.Kubectl(ctx, c, "-n", "kube-system", "rollout", "status", "deploy/coredns", "--timeout=3m"); err != nil {
			return nil, fmt.Errorf("cluster %s: CoreDNS rollout: %w: %s", c.Name, err, out)
		}
		refs, err := l.ReadyPodRefs(ctx, c, "kube-system", "k8s-app=kube-dns")
		if err != nil {
			return nil, err
		}
		if len(refs) != 1 {
			return nil, fmt.Errorf("cluster %s: %d Ready CoreDNS pods, want 1", c.Name, len(refs))
		}
		e, err := endpointOf(l, refs[0])
		if err != nil {
			return nil, err
		}
		dns[c.Name] = e
	}
	want := exportedIPs(eps)
	deadline := time.Now().Add(2 * time.Minute)
	for _, q := range queriers(eps) {
		for {
			got, _, err := lookup(ctx, q, dns[q.Cluster])
			if err == nil && slices.Equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%s does not resolve %s to every echo pod %v after 2m: %v %v", q, ExportedName, want, got, err)
			}
			if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	return dns, nil
}

// endpointOf finds the node of a pod by its IP.
func endpointOf(l *lab.Lab, r lab.PodRef) (Endpoint, error) {
	for _, n := range l.Nodes() {
		if n.PodCIDR.Contains(r.IP) {
			return Endpoint{PodRef: r, Node: n.Name}, nil
		}
	}
	return Endpoint{}, fmt.Errorf("pod %s (%s) is in no node's pod CIDR", r, r.IP)
}

// queriers are the pods that resolve: the first echo pod of each cluster.
func queriers(eps []Endpoint) []Endpoint {
	var out []Endpoint
	seen := map[string]bool{}
	for _, e := range eps {
		if !seen[e.Cluster] {
			seen[e.Cluster] = true
			out = append(out, e)
		}
	}
	return out
}

func exportedIPs(eps []Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, e := range eps {
		out = append(out, e.IP)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// How long a lookup may take. A pod's resolver (glibc, resolv.conf
// timeout:5 as Kubernetes leaves it) waits 5 s for an answer before it
// asks again: an answer within resolverTimeout is one the pod gets, however
// late, and only a lookup without an answer within it failed. Answers
// slower than slowAnswer are counted and listed, not failed: on a loaded
// machine they measure the scheduler, not the mesh.
const (
	resolverTimeout = 5 * time.Second
	slowAnswer      = time.Second
)

// lookup resolves ExportedName's A records (sorted) from pod q through the
// CoreDNS pod dns, and says how long the answer took.
func lookup(ctx context.Context, q, dns Endpoint) ([]netip.Addr, time.Duration, error) {
	return queryA(ctx, q.NetNS, dns.IP, ExportedName, resolverTimeout)
}

// queryA sends one DNS query for name's A records from inside netns to
// server:53 over UDP and waits up to wait for its answer (what a stub
// resolver does for one try; unlike Go's resolver it tells a late answer
// from none). It returns the addresses, sorted, and the answer's delay.
func queryA(ctx context.Context, netns string, server netip.Addr, name string, wait time.Duration) ([]netip.Addr, time.Duration, error) {
	q, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return nil, 0, err
	}
	id := uint16(mrand.Uint32())
	msg := dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: q, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}}}
	req, err := msg.Pack()
	if err != nil {
		return nil, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	conn, err := lab.DialIn(ctx, netns, "udp", netip.AddrPortFrom(server, 53).String())
	if err != nil {
		return nil, 0, err
	}
	defer conn.Close()
	start := time.Now()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, 0, err
	}
	if _, err := conn.Write(req); err != nil {
		return nil, time.Since(start), fmt.Errorf("send query: %w", err)
	}
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		took := time.Since(start)
		if err != nil {
			return nil, took, fmt.Errorf("no answer within %s: %w", wait, err)
		}
		var m dnsmessage.Message
		if m.Unpack(buf[:n]) != nil || m.ID != id || !m.Response {
			continue // not the answer to this query
		}
		if m.RCode != dnsmessage.RCodeSuccess {
			return nil, took, fmt.Errorf("answer %s", m.RCode)
		}
		if m.Truncated {
			return nil, took, errors.New("answer truncated")
		}
		var ips []netip.Addr
		for _, a := range m.Answers {
			if r, ok := a.Body.(*dnsmessage.AResource); ok {
				ips = append(ips, netip.AddrFrom4(r.A))
			}
		}
		slices.SortFunc(ips, netip.Addr.Compare)
		return ips, took, nil
	}
}

// BadLookup is a lookup that failed or did not list exactly every echo pod.
type BadLookup struct {
	From, DNS Endpoint
	At        time.Time
	// Took is how long the lookup ran (a timeout: the whole budget).
	Took time.Duration
	Got  string
}

// dnsProbes resolve ExportedName from one pod per cluster every interval.
type dnsProbes struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu protects took and bad.
	mu sync.Mutex
	// took is the duration of every lookup that answered, slow lists
	// those slower than slowAnswer.
	took []time.Duration
	slow []string
	bad  []BadLookup
	// total counts every lookup.
	total int
}

func startDNSProbes(ctx context.Context, eps []Endpoint, dns map[string]Endpoint, every time.Duration) *dnsProbes {
	ctx, cancel := context.WithCancel(ctx)
	p := &dnsProbes{cancel: cancel}
	want := exportedIPs(eps)
	for _, q := range queriers(eps) {
		p.wg.Go(func() {
			for sleepCtx(ctx, every) == nil {
				at := time.Now()
				got, took, err := lookup(ctx, q, dns[q.Cluster])
				if ctx.Err() != nil {
					return
				}
				p.mu.Lock()
				p.total++
				if err == nil {
					p.took = append(p.took, took)
					if took > slowAnswer {
						p.slow = append(p.slow, fmt.Sprintf("%s from %s: %.0f ms", at.Format("15:04:05.000"), q, took.Seconds()*1000))
					}
				}
				if err != nil || !slices.Equal(got, want) {
					b := BadLookup{From: q, DNS: dns[q.Cluster], At: at, Took: took, Got: fmt.Sprint(got)}
					if err != nil {
						b.Got = err.Error()
					}
					p.bad = append(p.bad, b)
				}
				p.mu.Unlock()
			}
		})
	}
	return p
}

// LookupTimes summarises how long the lookups that got an answer took;
// Slow lists each answer slower than slowAnswer (when, from where, how
// slow).
type LookupTimes struct {
	P50, P99, P999, Max time.Duration
	Slow                []string
}

func (p *dnsProbes) stop() (int, LookupTimes, []BadLookup) {
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	slices.Sort(p.took)
	q := func(f float64) time.Duration {
		if len(p.took) == 0 {
			return 0
		}
		return p.took[int(f*float64(len(p.took)-1))]
	}
	return p.total, LookupTimes{P50: q(0.5), P99: q(0.99), P999: q(0.999), Max: q(1), Slow: slices.Clone(p.slow)}, slices.Clone(p.bad)
}

// checkImports resolves ExportedName once more from every cluster: the
// imports must list exactly the exported echo pods.
func checkImports(ctx context.Context, eps []Endpoint, dns map[string]Endpoint) error {
	want := exportedIPs(eps)
	var errs []error
	for _, q := range queriers(eps) {
		got, _, err := lookup(ctx, q, dns[q.Cluster])
		if err != nil || !slices.Equal(got, want) {
			errs = append(errs, fmt.Errorf("%s resolves %s to %v (%v), want every exported echo pod %v", q, ExportedName, got, err, want))
		}
	}
	return errors.Join(errs...)
}

// waitImports polls checkImports until it holds or healTimeout passes.
func waitImports(ctx context.Context, eps []Endpoint, dns map[string]Endpoint) error {
	deadline := time.Now().Add(healTimeout)
	for {
		err := checkImports(ctx, eps, dns)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}
