package lab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/test/lab"
)

// A pod on c2's pool node gets an IP outside the node's pod CIDR from the
// real CNI (host-local allocating from the node's pool, as multi-pool IPAM
// does), so only its own host prefix makes it reachable: the prefix appears
// in every remote node's kernel once the kubelet reports the pod's IP, the
// pod is reachable from the other clusters with the sender's IP seen, and
// the prefix is withdrawn everywhere when the pod is deleted. The latency
// from the Kubernetes write to the change in each remote node's kernel (the
// route; in ebpf mode the ipcache entry, read every 2 ms, since there the
// route covers the whole cluster) is measured and logged.
func testRealPodOutsideNodeCIDR(t *testing.T, ctx context.Context, l *lab.Lab, mode string) {
	c2 := l.Cluster(2)
	node := c2.Node(poolNode)
	remotes := l.Nodes(l.Cluster(1), l.Cluster(3))
	watches := watchRoutes(t, remotes)
	kc := c2.Kube.Client.CoreV1().Pods(metav1.NamespaceDefault)

	name := "outside-" + mode
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault, Labels: map[string]string{"app": "outside"}},
		Spec:       l.EchoDeployment(1).Spec.Template.Spec,
	}
	pod.Spec.TopologySpreadConstraints = nil
	pod.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node.Name}
	w, err := kc.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := kc.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			_ = kc.Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		}
	})
	// The moment the kubelet's status write with the IP reaches the test.
	var ip netip.Addr
	var reported time.Time
	for !ip.IsValid() {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("pod watch closed before the pod had an IP")
			}
			if p, ok := ev.Object.(*corev1.Pod); ok && p.Status.PodIP != "" {
				reported = time.Now()
				if ip, err = netip.ParseAddr(p.Status.PodIP); err != nil {
					t.Fatal(err)
				}
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("pod got no IP within 2m")
		}
	}
	if node.PodCIDR.Contains(ip) || !node.PodPool.Contains(ip) {
		t.Fatalf("pod %s on %s got %s, want an IP of the node's pool %s, outside its pod CIDR %s", name, node.Name, ip, node.PodPool, node.PodCIDR)
	}
	host := netip.PrefixFrom(ip, 32)
	var add latencies
	for k, w := range watches {
		ev, err := w.WaitFor(ctx, 30*time.Second, func(ev lab.RouteEvent) bool { return ev.Added && ev.Prefix == host })
		if err != nil {
			t.Fatalf("node %s: %s never appeared: %v", remotes[k].Name, host, err)
		}
		add = append(add, ev.Time.Sub(reported))
	}
	eventually(t, time.Minute, "pod "+name+" Ready", func() error {
		p, err := kc.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !lab.PodReady(p) {
			return fmt.Errorf("not Ready: %s", p.Status.Phase)
		}
		return nil
	})
	// Reachable from a pod in each other cluster, source preserved.
	for _, c := range []int{1, 3} {
		from := realPod(t, ctx, l, c)
		res, err := lab.Probe(ctx, from.NetNS, netip.AddrPortFrom(ip, lab.ServeTCPPort), 5*time.Second)
		if err != nil {
			t.Fatalf("%s -> pod %s (%s): %v", from, name, ip, err)
		}
		if res.Seen.Addr() != from.IP {
			t.Fatalf("%s -> pod %s (%s): receiver saw %s", from, name, ip, res.Seen)
		}
	}
	converged(t, ctx, l, time.Minute)

	deleted := time.Now()
	if out, err := l.Kubectl(ctx, c2, "delete", "pod", name, "--wait=false"); err != nil {
		t.Fatalf("kubectl delete pod: %v: %s", err, out)
	}
	removed = true
	var del latencies
	for k, w := range watches {
		ev, err := w.WaitFor(ctx, 30*time.Second, func(ev lab.RouteEvent) bool { return !ev.Added && ev.Prefix == host })
		if err != nil {
			t.Fatalf("node %s: %s never withdrawn: %v", remotes[k].Name, host, err)
		}
		del = append(del, ev.Time.Sub(deleted))
		routes, err := lab.PodmeshRoutes(remotes[k].NetNS)
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := routes[host]; ok {
			t.Fatalf("node %s still routes %s: %+v", remotes[k].Name, host, r)
		}
	}
	t.Logf("MEASURED %s: pod IP reported by the kubelet (seen by a watch) -> %s in remote node kernel (route; ipcache in ebpf mode): %s", mode, host, add)
	t.Logf("MEASURED %s: kubectl delete pod (grace 2s) -> %s withdrawn in remote node kernel: %s", mode, host, del)
	converged(t, ctx, l, time.Minute)
}

// The agent pods on both ends of a 500 pps sequence-numbered UDP stream
// (c1 pod -> c2 pod) are replaced (kubectl delete pod: SIGTERM, the
// DaemonSet starts a new pod) and crashed (SIGKILL of the agent process:
// the kubelet restarts the container), one node at a time: while no agent
// runs on the node the kernel keeps forwarding, not one datagram is lost,
// and no podmesh route is removed.
func testRealAgentRestart(t *testing.T, ctx context.Context, l *lab.Lab, mode string) {
	from, to := realPod(t, ctx, l, 1), realPod(t, ctx, l, 2)
	nodes := []*lab.Node{l.Cluster(1).Node(from.Node), l.Cluster(2).Node(to.Node)}
	watches := watchRoutes(t, nodes)
	stream := startUDPStream(t, ctx, from.NetNS, to.NetNS, to.IP)
	rx, tx := stream.rx, stream.tx
	start := time.Now()
	restarts := 0
	var gaps []string
	for _, n := range nodes {
		for _, crash := range []bool{false, true} {
			old, err := l.AgentPIDs(n)
			if err != nil || len(old) != 1 {
				t.Fatalf("node %s: agent processes %v (%v), want one", n.Name, old, err)
			}
			how := "SIGKILL"
			if crash {
				if err := l.KillAgent(n); err != nil {
					t.Fatal(err)
				}
			} else {
				how = "pod deleted"
				pod := agentPod(t, ctx, l, n)
				if out, err := l.Kubectl(ctx, n.Cluster, "-n", lab.PodmeshNamespace, "delete", "pod", pod, "--wait=false"); err != nil {
					t.Fatalf("kubectl delete pod %s: %v: %s", pod, err, out)
				}
			}
			// Watch the node without an agent: the kernel must keep
			// forwarding until the new agent process starts.
			var downAt, upAt int
			var down time.Time
			eventually(t, 2*time.Minute, "a new agent process on "+n.Name, func() error {
				pids, err := l.AgentPIDs(n)
				if err != nil {
					return err
				}
				got, _ := rx.Received(tx.Sent())
				switch {
				case len(pids) == 0 && down.IsZero():
					down, downAt = time.Now(), got
				case len(pids) == 1 && pids[0] != old[0] && !down.IsZero():
					upAt = got
					return nil
				}
				return fmt.Errorf("agent processes %v (the old one %d)", pids, old[0])
			})
			if upAt <= downAt {
				t.Fatalf("node %s: no datagram delivered while no agent ran (%s, %d before, %d after)", n.Name, how, downAt, upAt)
			}
			gaps = append(gaps, fmt.Sprintf("%s %s: %d delivered in %s without an agent", n.Name, how, upAt-downAt, time.Since(down).Round(time.Millisecond)))
			before := tx.Sent()
			restarts++
			eventually(t, 2*time.Minute, "new agent on "+n.Name+" synced", func() error {
				st, err := l.AgentStatus(ctx, n)
				if err != nil {
					return err
				}
				if !st.Mesh.Synced {
					return fmt.Errorf("not synced: %s", st.Mesh.SyncReason)
				}
				for _, r := range st.Mesh.Remotes {
					if !r.Ready {
						return fmt.Errorf("%s not ready: %s", r.Cluster, r.Reason)
					}
				}
				return nil
			})
			eventually(t, 10*time.Second, "datagrams sent after the restart", func() error {
				if s := tx.Sent(); s < before+50 {
					return fmt.Errorf("%d sent since", s-before)
				}
				return nil
			})
		}
	}
	took := time.Since(start)
	sent := stream.stopAndCheckNoneLost(t)
	checkNoRouteRemoved(t, nodes, watches, nil, "during agent restarts")
	converged(t, ctx, l, 2*time.Minute)
	t.Logf("without an agent: %s", strings.Join(gaps, "; "))
	t.Logf("MEASURED %s: agent restarts: %d (agent pod deleted + agent process SIGKILLed, on the sender's and the receiver's node) over %.1fs, %d datagrams sent at 500/s, %d received, 0 lost",
		mode, restarts, took.Seconds(), sent, sent)
}

// agentPod is the name of the agent pod on node n.
func agentPod(t *testing.T, ctx context.Context, l *lab.Lab, n *lab.Node) string {
	t.Helper()
	pods, err := n.Cluster.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=podmesh-agent",
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", n.Name).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			names = append(names, p.Name)
		}
	}
	if len(names) != 1 {
		t.Fatalf("node %s: agent pods %v, want one", n.Name, names)
	}
	return names[0]
}

// impostor is a second clustermesh-apiserver installed in a host cluster
// under a wrong identity: a Deployment of the base's clustermesh-apiserver
// with its own name, cluster ID and pod CIDRs, its own CA and serving
// certificate, behind a NodePort of its own. It publishes the host's nodes
// and pods under its own name (those inside its pod CIDRs).
type impostor struct {
	name     string
	host     *lab.Cluster
	nodePort int32
}

// install applies the impostor's Secret, Deployment and Service in its host
// and returns the Secret entry a peer's agents need to reach it (CN
// remote-<peer>, issued by the impostor's CA).
func (im impostor) install(t *testing.T, ctx context.Context, l *lab.Lab, images lab.ImageSet, id uint32, cidrs []netip.Prefix, peer string) lab.RemoteConfig {
	t.Helper()
	ca, err := certs.NewCA(certs.Options{CommonName: "podmesh-" + im.name + "-ca"})
	if err != nil {
		t.Fatal(err)
	}
	var ips []net.IP
	var eps []string
	for _, n := range im.host.NodeList() {
		ips = append(ips, net.IP(n.IP.AsSlice()))
		eps = append(eps, certs.ProxyEndpoint(n.IP.String(), int(im.nodePort)))
	}
	server, err := ca.IssueServer(certs.Options{CommonName: "clustermesh-apiserver." + im.name, IPAddresses: ips})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.IssueClient(certs.Options{CommonName: certs.PeerCN(peer)})
	if err != nil {
		t.Fatal(err)
	}
	obj := im.objName()
	apply := func(kind string, o any) {
		t.Helper()
		if err := l.ApplyObject(ctx, im.host, obj+"-"+kind, o); err != nil {
			t.Fatal(err)
		}
	}
	apply("secret", &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: obj, Namespace: lab.PodmeshNamespace},
		Data:       map[string][]byte{"tls.crt": server.CertPEM, "tls.key": server.KeyPEM, "ca.crt": ca.CertPEM},
	})
	apply("deployment", im.deployment(t, images, id, cidrs, peer))
	labels := map[string]string{"app.kubernetes.io/name": obj}
	apply("service", &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: obj, Namespace: lab.PodmeshNamespace},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "etcd", Port: 2379, TargetPort: intstr.FromString("etcd"), NodePort: im.nodePort}},
		},
	})
	eventually(t, 2*time.Minute, obj+" Ready in "+im.host.Name, func() error {
		d, err := im.host.Kube.Client.AppsV1().Deployments(lab.PodmeshNamespace).Get(ctx, obj, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 1 {
			return fmt.Errorf("%d ready replicas", d.Status.ReadyReplicas)
		}
		return nil
	})
	return lab.RemoteConfig{Name: im.name, Endpoints: eps, CAPEM: ca.CertPEM, CertPEM: client.CertPEM, KeyPEM: client.KeyPEM}
}

func (im impostor) objName() string { return "clustermesh-apiserver-" + im.name }

// deployment is daemonset/base's clustermesh-apiserver Deployment with the
// impostor's name, labels, identity, TLS Secret and image, without the
// service import (no clustermesh Secret).
func (im impostor) deployment(t *testing.T, images lab.ImageSet, id uint32, cidrs []netip.Prefix, peer string) *appsv1.Deployment {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(moduleRootT(t), "daemonset", "base", "apiserver-deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	obj := im.objName()
	labels := map[string]string{"app.kubernetes.io/name": obj}
	d.Name, d.Labels = obj, labels
	one := int32(1)
	d.Spec.Replicas = &one // the impostor's check waits for one Ready replica
	d.Spec.Selector = &metav1.LabelSelector{MatchLabels: labels}
	d.Spec.Template.Labels = labels
	spec := &d.Spec.Template.Spec
	values := map[string]string{"CLUSTER_NAME": im.name, "CLUSTER_ID": fmt.Sprint(id), "ALLOWED_PEERS": certs.PeerCN(peer)}
	var pcs []string
	for _, p := range cidrs {
		pcs = append(pcs, p.String())
	}
	values["POD_CIDRS"] = strings.Join(pcs, ",")
	ctr := &spec.Containers[0]
	ctr.Image = images.Ref("clustermesh-apiserver")
	for k, e := range ctr.Env {
		if v, ok := values[e.Name]; ok {
			ctr.Env[k] = corev1.EnvVar{Name: e.Name, Value: v}
		}
	}
	ctr.Args = slices.DeleteFunc(ctr.Args, func(a string) bool { return strings.HasPrefix(a, "--clustermesh-config=") })
	ctr.VolumeMounts = slices.DeleteFunc(ctr.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "clustermesh" })
	spec.Volumes = slices.DeleteFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == "clustermesh" })
	for k := range spec.Volumes {
		if spec.Volumes[k].Name == "tls" {
			spec.Volumes[k].Secret.SecretName = obj
		}
	}
	return &d
}

// uninstall deletes the impostor's objects.
func (im impostor) uninstall(ctx context.Context, l *lab.Lab) error {
	obj := im.objName()
	out, err := l.Kubectl(ctx, im.host, "-n", lab.PodmeshNamespace, "delete", "--ignore-not-found", "deployment/"+obj, "service/"+obj, "secret/"+obj)
	if err != nil {
		return fmt.Errorf("cluster %s: delete %s: %w: %s", im.host.Name, obj, err, out)
	}
	return nil
}

// Misconfigured remotes in the clusters' podmesh-clustermesh Secrets are
// refused, each with its reason in the agents' /status, nothing of them is
// programmed, and the rest of the mesh keeps working:
//   - c2's Secret adds c4, a clustermesh-apiserver installed in c1 under the
//     name c4 with c1's pod range (c1's clone: overlapping pod CIDRs);
//   - c1's Secret adds c5, one installed in c3 with c2's cluster ID, and
//     its entry for c3 carries a certificate of c3's CA whose CN
//     (remote-intruder) is not on c3's allow-list;
//   - c3's Secret's entry for c1 carries a client certificate from a CA c1
//     does not trust.
func testRealMisconfigurations(t *testing.T, ctx context.Context, l *lab.Lab, mode string) {
	c1, c2, c3 := l.Cluster(1), l.Cluster(2), l.Cluster(3)
	images := labImages(t)
	c4 := impostor{name: "c4", host: c1, nodePort: 32380}
	c5 := impostor{name: "c5", host: c3, nodePort: 32381}
	t.Cleanup(func() {
		ctx := context.Background()
		for _, c := range []*lab.Cluster{c1, c2, c3} {
			if err := l.ApplyMeshSecret(ctx, c); err != nil {
				t.Errorf("restore the Secret of %s: %v", c.Name, err)
			}
		}
		for _, im := range []impostor{c4, c5} {
			if err := im.uninstall(ctx, l); err != nil {
				t.Error(err)
			}
		}
		t0 := time.Now()
		if err := l.WaitConverged(ctx, 3*time.Minute); err != nil {
			t.Errorf("mesh after the misconfigurations were undone: %v", err)
		}
		t.Logf("MEASURED %s: misconfigurations undone (Secrets restored, impostors removed): mesh converged %.1fs later", mode, time.Since(t0).Seconds())
	})
	t0 := time.Now()
	c4cfg := c4.install(t, ctx, l, images, 4, c1.PodCIDRs, c2.Name)
	c5cfg := c5.install(t, ctx, l, images, c2.ID, []netip.Prefix{lab.ClusterPodCIDR(5)}, c1.Name)
	t.Logf("impostors c4 (in c1) and c5 (in c3) Ready in %.1fs", time.Since(t0).Seconds())

	cfgs := func(local *lab.Cluster, remotes ...*lab.Cluster) []lab.RemoteConfig {
		t.Helper()
		out, err := l.MeshConfigs(local, remotes...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// c2: c1, c3 and the overlapping c4.
	apply := func(c *lab.Cluster, remotes []lab.RemoteConfig) {
		t.Helper()
		if err := l.ApplyMeshSecret(ctx, c, remotes...); err != nil {
			t.Fatal(err)
		}
	}
	applied := time.Now()
	apply(c2, append(cfgs(c2, c1, c3), c4cfg))
	// c1: c2, c3 with a CN not on c3's allow-list, c5 with c2's ID.
	intruder, err := c3.PeerCert("intruder")
	if err != nil {
		t.Fatal(err)
	}
	c1cfgs := cfgs(c1, c2, c3)
	c1cfgs[1].CertPEM, c1cfgs[1].KeyPEM = intruder.CertPEM, intruder.KeyPEM
	apply(c1, append(c1cfgs, c5cfg))
	// c3: c1 with a client certificate from a CA c1 does not trust, c2.
	evil, err := certs.NewCA(certs.Options{CommonName: "not-c1-ca"})
	if err != nil {
		t.Fatal(err)
	}
	evilCert, err := evil.IssueClient(certs.Options{CommonName: certs.PeerCN(c3.Name)})
	if err != nil {
		t.Fatal(err)
	}
	c3cfgs := cfgs(c3, c1, c2)
	c3cfgs[0].CertPEM, c3cfgs[0].KeyPEM = evilCert.CertPEM, evilCert.KeyPEM
	apply(c3, c3cfgs)

	type refusal struct {
		node    *lab.Node
		cluster string
		want    []string // each must appear in reason or last error
		anyOf   []string // at least one must appear
		tls     bool     // a known remote whose credentials changed: it keeps its last-known prefixes
	}
	// A TLS refusal must say it is about the certificate, not just time out.
	tlsWords := []string{"certificate", "x509", "tls", "authority", "not allowed", "permission"}
	var refusals []refusal
	for _, n := range c2.NodeList() {
		refusals = append(refusals, refusal{n, c4.name, []string{"overlaps", c1.Name}, nil, false})
	}
	for _, n := range c1.NodeList() {
		refusals = append(refusals, refusal{n, c5.name, []string{"cluster ID 2", c2.Name}, nil, false},
			refusal{n, c3.Name, nil, tlsWords, true})
	}
	for _, n := range c3.NodeList() {
		refusals = append(refusals, refusal{n, c1.Name, nil, tlsWords, true})
	}
	seen := map[string]string{}
	// Not fatal: whatever the refusals look like, the rest of the mesh is
	// checked below. The kubelet refreshes the Secret volumes within 1.5
	// sync periods (KubeletSyncFrequency).
	refusedErr := waitCond(2*time.Minute, func() error {
		var errs []error
		for _, r := range refusals {
			st, err := l.AgentStatus(ctx, r.node)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			rs := st.Remote(r.cluster)
			if rs == nil {
				errs = append(errs, fmt.Errorf("%s: no status for %s", r.node.Name, r.cluster))
				continue
			}
			text := rs.Reason + " | " + rs.LastError
			seen[r.node.Name+" -> "+r.cluster] = text
			if rs.Ready {
				errs = append(errs, fmt.Errorf("%s: %s is ready, want refused", r.node.Name, r.cluster))
				continue
			}
			if rs.Reason == "" && rs.LastError == "" {
				errs = append(errs, fmt.Errorf("%s: %s refused without a reason", r.node.Name, r.cluster))
			}
			for _, w := range r.want {
				if !strings.Contains(text, w) {
					errs = append(errs, fmt.Errorf("%s: %s refused with %q, want it to mention %q", r.node.Name, r.cluster, text, w))
				}
			}
			if len(r.anyOf) > 0 && !slices.ContainsFunc(r.anyOf, func(w string) bool { return strings.Contains(strings.ToLower(text), w) }) {
				errs = append(errs, fmt.Errorf("%s: %s refused with %q, want the reason to mention one of %q", r.node.Name, r.cluster, text, r.anyOf))
			}
			if rs.Prefixes != 0 && !r.tls {
				errs = append(errs, fmt.Errorf("%s: refused %s still has %d prefixes", r.node.Name, r.cluster, rs.Prefixes))
			}
		}
		return errors.Join(errs...)
	})
	if refusedErr != nil {
		t.Errorf("every misconfiguration refused with its reason: not within 2m: %v", refusedErr)
	} else {
		t.Logf("MEASURED %s: every misconfiguration refused with its reason %.1fs after the Secrets were applied (kubelet volume refresh, syncFrequency %s)", mode, time.Since(applied).Seconds(), lab.KubeletSyncFrequency)
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("status of %s: %s", k, seen[k])
	}

	// The rest of the mesh: every legitimate remote ready (a remote whose
	// credentials went bad keeps its last-known routes, as after any config
	// change), the kernel holds exactly the lab clusters' prefixes (none of
	// c4's or c5's), and every pod still reaches every other cluster.
	tampered := func(n *lab.Node, o *lab.Cluster) bool {
		return (n.Cluster == c1 && o == c3) || (n.Cluster == c3 && o == c1)
	}
	for _, n := range l.Nodes(c1, c2, c3) {
		st, err := l.AgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		var legit []*lab.Cluster
		for _, o := range []*lab.Cluster{c1, c2, c3} {
			if o == n.Cluster {
				continue
			}
			legit = append(legit, o)
			if tampered(n, o) {
				continue
			}
			if rs := st.Remote(o.Name); rs == nil || !rs.Ready {
				t.Errorf("%s: legitimate remote %s not ready: %+v", n.Name, o.Name, rs)
			}
		}
		if err := l.CheckNode(ctx, n, legit); err != nil {
			t.Error(err)
		}
	}
	refs, err := l.KubePodRefs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	matrixOK(t, ctx, refs)
}
