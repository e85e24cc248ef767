package lab_test

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutils"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podmesh/podmesh/images"
	"github.com/podmesh/podmesh/test/kubetest"
	"github.com/podmesh/podmesh/test/lab"
)

// corednsManifest is CoreDNS for one lab cluster; IMAGE is replaced by the
// lab's coredns image.
//
//go:embed testdata/coredns.yaml
var corednsManifest string

// svcNS is the namespace of the multi-cluster services test, in every
// cluster (the importer writes only into namespaces that exist).
const svcNS = "mcs"

// mcsLab is a real lab with CoreDNS in every cluster; the test queries each
// cluster's CoreDNS pod directly (the lab's kubelets have no clusterDNS).
type mcsLab struct {
	l   *lab.Lab
	ctx context.Context
	// dns is each cluster's CoreDNS pod IP, by cluster name.
	dns map[string]netip.Addr
}

// TestRealLabMultiClusterServices runs the multi-cluster services story on
// 3 real clusters (2 real nodes each: kubelet, containerd, kube-proxy),
// podmesh installed from daemonset/, CoreDNS 1.14.7 with the multicluster
// option as a Deployment in each: StatefulSet pods found by
// <hostname>.<cluster>.db.<ns>.svc.clusterset.local from every cluster and
// reached with the caller's own pod IP.
func TestRealLabMultiClusterServices(t *testing.T) {
	testutils.RequireRoot(t)
	o := realLabOptions(t)
	o.Images = withCoreDNSImage(t, o.BinDir, o.Images)
	o.APIServerReplicas = 1 // as TestRealLabEndToEnd: the drills replace and inspect "the" replica
	ctx := withTimeout(t, 15*time.Minute)
	t0 := time.Now()
	l := upLab(t, ctx, o, lab.Topology{Clusters: 3, Nodes: 2})
	m := &mcsLab{l: l, ctx: ctx, dns: map[string]netip.Addr{}}
	m.installCoreDNS(t, o.Images.Ref("coredns"))
	t.Logf("real lab up (3 clusters x 2 nodes), podmesh and CoreDNS Ready in %.1fs", time.Since(t0).Seconds())

	for _, step := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"StatefulSetPodsResolveAndAnswerAcrossClusters", m.testStatefulSet},
		{"ChurnNamesFollowPods", m.testChurn},
		{"GlobalServiceReachesBothClusters", m.testGlobalService},
		{"ConflictOldestWinsAndPrivacy", m.testConflictAndPrivacy},
		{"UntrustedRemoteRefusedAndRemovedConfigWithdrawn", m.testUntrustedRemoteAndConfigRemoval},
		{"MeshAPIServerKilledNamesKeepResolving", m.testMeshAPIServerKilled},
	} {
		if !t.Run(step.name, step.run) {
			return
		}
	}
}

// withCoreDNSImage adds the coredns image (bin/coredns, package images) to
// the lab's images, built into the same directory.
func withCoreDNSImage(t *testing.T, bin string, set lab.ImageSet) lab.ImageSet {
	t.Helper()
	if _, err := os.Stat(filepath.Join(bin, "coredns")); err != nil {
		t.Fatalf("coredns missing in %s (make tools builds it): %v", bin, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	imgs, err := images.Build(ctx, images.Options{OutDir: imagesDir, GoBuild: true, BinDir: bin})
	require.NoError(t, err)
	for _, im := range imgs {
		if im.Name == "coredns" {
			return append(slices.Clone(set), lab.ImageArchive{Name: im.Name, Ref: im.Ref, Archive: im.Archive})
		}
	}
	t.Fatal("images.Build wrote no coredns image")
	return nil
}

// installCoreDNS applies daemonset/coredns (ServiceImport read access) and
// the CoreDNS Deployment in every cluster, creates the test namespace, and
// records each CoreDNS pod's IP once it is Ready.
func (m *mcsLab) installCoreDNS(t *testing.T, image string) {
	t.Helper()
	repo := moduleRootT(t)
	manifest := strings.ReplaceAll(corednsManifest, "IMAGE", image)
	path := filepath.Join(t.TempDir(), "coredns.yaml")
	require.NoError(t, os.WriteFile(path, []byte(manifest), 0o600))
	for _, c := range m.l.Clusters() {
		m.kubectl(t, c, "apply", "-k", filepath.Join(repo, "daemonset", "coredns"))
		m.kubectl(t, c, "apply", "-f", path)
		m.apply(t, c, "ns-"+svcNS, &corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: svcNS},
		})
	}
	for _, c := range m.l.Clusters() {
		m.kubectl(t, c, "-n", "kube-system", "rollout", "status", "deploy/coredns", "--timeout=3m")
		refs := m.readyPods(t, c, "kube-system", "k8s-app=kube-dns")
		require.Len(t, refs, 1, "cluster %s: CoreDNS pods", c.Name)
		m.dns[c.Name] = refs[0].IP
	}
}

func (m *mcsLab) kubectl(t *testing.T, c *lab.Cluster, args ...string) string {
	t.Helper()
	out, err := m.l.Kubectl(m.ctx, c, args...)
	require.NoError(t, err, "kubectl --context %s %s: %s", c.Name, strings.Join(args, " "), out)
	return out
}

func (m *mcsLab) apply(t *testing.T, c *lab.Cluster, name string, obj any) {
	t.Helper()
	require.NoError(t, m.l.ApplyObject(m.ctx, c, c.Name+"-"+name, obj))
}

func (m *mcsLab) readyPods(t *testing.T, c *lab.Cluster, ns, selector string) []lab.PodRef {
	t.Helper()
	refs, err := m.l.ReadyPodRefs(m.ctx, c, ns, selector)
	require.NoError(t, err)
	return refs
}

// lookup resolves name's A records (sorted) from the pod `from` through its
// own cluster's CoreDNS.
func (m *mcsLab) lookup(from lab.PodRef, name string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(m.ctx, 2*time.Second)
	defer cancel()
	return lab.LookupIn(ctx, from.NetNS, m.dns[from.Cluster], name)
}

// dbName is the clusterset name of StatefulSet pod p.
func dbName(p lab.PodRef) string {
	return fmt.Sprintf("%s.%s.db.%s.svc.clusterset.local", p.Name, p.Cluster, svcNS)
}

// echoTemplate is the pod template of the lab's echo Deployment with the
// label app=<app>.
func (m *mcsLab) echoTemplate(app string) corev1.PodTemplateSpec {
	tmpl := *m.l.EchoDeployment(1).Spec.Template.DeepCopy()
	tmpl.Labels = map[string]string{"app": app}
	tmpl.Spec.TopologySpreadConstraints = nil
	return tmpl
}

// echoService is a Service of the echo port (tcp 7777) selecting app=<name>;
// headless when headless.
func echoService(name string, headless bool, port int32) *corev1.Service {
	s := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: svcNS},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name: "tcp", Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(lab.ServeTCPPort),
			}},
		},
	}
	if headless {
		s.Spec.ClusterIP = corev1.ClusterIPNone
	}
	return s
}

// serviceExport is the ServiceExport of svcNS/name.
func serviceExport(name string) map[string]any {
	return map[string]any{
		"apiVersion": "multicluster.x-k8s.io/v1alpha1",
		"kind":       "ServiceExport",
		"metadata":   map[string]any{"name": name, "namespace": svcNS},
	}
}

// dbStatefulSet is the StatefulSet db: replicas echo pods from ordinal start.
func (m *mcsLab) dbStatefulSet(replicas, start int32) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"},
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: svcNS},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            &replicas,
			Ordinals:            &appsv1.StatefulSetOrdinals{Start: start},
			ServiceName:         "db",
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template:            m.echoTemplate("db"),
		},
	}
}

// dbLayout is the StatefulSet db per cluster: replicas and first ordinal.
var dbLayout = []struct{ replicas, start int32 }{{2, 0}, {1, 2}, {1, 3}}

// waitDB waits until cluster c runs exactly the db pods named, all Ready,
// and returns them.
func (m *mcsLab) waitDB(t *testing.T, c *lab.Cluster, names ...string) []lab.PodRef {
	t.Helper()
	var refs []lab.PodRef
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		var err error
		refs, err = m.l.ReadyPodRefs(m.ctx, c, svcNS, "app=db")
		require.NoError(ct, err)
		var got []string
		for _, r := range refs {
			got = append(got, r.Name)
		}
		require.Equal(ct, names, got, "cluster %s: Ready db pods", c.Name)
	}, 3*time.Minute, 100*time.Millisecond)
	return refs
}

// testStatefulSet: db in every cluster, disjoint ordinals; every db pod
// resolves every other by its clusterset hostname through its own
// cluster's CoreDNS and reaches it, the receiver seeing the caller's pod
// IP; the service name lists every pod; SRV names every pod.
func (m *mcsLab) testStatefulSet(t *testing.T) {
	for k, c := range m.l.Clusters() {
		m.apply(t, c, "db-svc", echoService("db", true, lab.ServeTCPPort))
		m.apply(t, c, "db-sts", m.dbStatefulSet(dbLayout[k].replicas, dbLayout[k].start))
		m.apply(t, c, "db-export", serviceExport("db"))
	}
	var all []lab.PodRef
	for k, c := range m.l.Clusters() {
		var names []string
		for i := range dbLayout[k].replicas {
			names = append(names, fmt.Sprintf("db-%d", dbLayout[k].start+i))
		}
		all = append(all, m.waitDB(t, c, names...)...)
	}
	t0 := time.Now()
	for _, from := range all {
		for _, to := range all {
			if from == to {
				continue
			}
			require.EventuallyWithT(t, func(ct *assert.CollectT) {
				ips, err := m.lookup(from, dbName(to))
				require.NoError(ct, err)
				require.Equal(ct, []netip.Addr{to.IP}, ips, "%s resolving %s", from, dbName(to))
			}, 2*time.Minute, 50*time.Millisecond)
			res, err := lab.Probe(m.ctx, from.NetNS, netip.AddrPortFrom(to.IP, lab.ServeTCPPort), 5*time.Second)
			require.NoError(t, err, "%s -> %s", from, dbName(to))
			require.Equal(t, from.IP, res.Seen.Addr(), "%s -> %s: the receiver saw another source", from, dbName(to))
		}
	}
	t.Logf("every db pod resolved and reached every other (%d pairs) %.1fs after all were Ready", len(all)*(len(all)-1), time.Since(t0).Seconds())
	var want []netip.Addr
	var wantSRV []string
	for _, p := range all {
		want = append(want, p.IP)
		wantSRV = append(wantSRV, dbName(p)+".")
	}
	slices.SortFunc(want, netip.Addr.Compare)
	slices.Sort(wantSRV)
	name := "db." + svcNS + ".svc.clusterset.local"
	for _, from := range all {
		ips, err := m.lookup(from, name)
		require.NoError(t, err)
		require.Equal(t, want, ips, "%s resolving %s", from, name)
		ctx, cancel := context.WithTimeout(m.ctx, 2*time.Second)
		_, srvs, err := lab.ResolverIn(from.NetNS, m.dns[from.Cluster]).LookupSRV(ctx, "tcp", "tcp", name+".")
		cancel()
		require.NoError(t, err, "%s: SRV _tcp._tcp.%s", from, name)
		var targets []string
		for _, s := range srvs {
			require.Equal(t, uint16(lab.ServeTCPPort), s.Port)
			targets = append(targets, s.Target)
		}
		slices.Sort(targets)
		require.Equal(t, wantSRV, targets, "%s: SRV _tcp._tcp.%s", from, name)
	}
}

// podIP returns the IP of pod ns/name in cluster c once a pod of that name
// other than notUID is Ready, with its UID.
func (m *mcsLab) readyPod(c *lab.Cluster, name, notUID string) (netip.Addr, string, bool) {
	p, err := c.Kube.Client.CoreV1().Pods(svcNS).Get(m.ctx, name, metav1.GetOptions{})
	if err != nil || string(p.UID) == notUID || p.DeletionTimestamp != nil {
		return netip.Addr{}, "", false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			ip, err := netip.ParseAddr(p.Status.PodIP)
			return ip, string(p.UID), err == nil
		}
	}
	return netip.Addr{}, "", false
}

// resolvesTo waits until name resolves to exactly want from every pod of
// from.
func (m *mcsLab) resolvesTo(t *testing.T, from []lab.PodRef, name string, want ...netip.Addr) {
	t.Helper()
	slices.SortFunc(want, netip.Addr.Compare)
	for _, f := range from {
		require.EventuallyWithT(t, func(ct *assert.CollectT) {
			ips, err := m.lookup(f, name)
			require.NoError(ct, err)
			require.Equal(ct, want, ips, "%s resolving %s", f, name)
		}, 2*time.Minute, 20*time.Millisecond)
	}
}

// oneDBPodPerCluster returns the first Ready db pod of every cluster.
func (m *mcsLab) oneDBPodPerCluster(t *testing.T) []lab.PodRef {
	t.Helper()
	var out []lab.PodRef
	for _, c := range m.l.Clusters() {
		refs := m.readyPods(t, c, svcNS, "app=db")
		require.NotEmpty(t, refs, "cluster %s: no Ready db pod", c.Name)
		out = append(out, refs[0])
	}
	return out
}

// replaceDBPod deletes db pod name of cluster c and waits for the
// StatefulSet's replacement to be Ready with another IP; it returns the
// replacement and the time it was seen Ready.
func (m *mcsLab) replaceDBPod(t *testing.T, c *lab.Cluster, name string) (lab.PodRef, time.Time) {
	t.Helper()
	// A pod seen Ready a moment ago may fail one readiness probe on a busy
	// machine (seen once in a churn run): wait for it rather than fail.
	var oldIP netip.Addr
	var oldUID string
	require.Eventually(t, func() bool {
		var ok bool
		oldIP, oldUID, ok = m.readyPod(c, name, "")
		return ok
	}, time.Minute, 10*time.Millisecond, "cluster %s: pod %s not Ready", c.Name, name)
	m.kubectl(t, c, "-n", svcNS, "delete", "pod", name, "--wait=false")
	var ip netip.Addr
	require.Eventually(t, func() bool {
		var ok bool
		ip, _, ok = m.readyPod(c, name, oldUID)
		return ok
	}, 2*time.Minute, 10*time.Millisecond, "cluster %s: replacement of %s Ready", c.Name, name)
	ready := time.Now()
	require.NotEqual(t, oldIP, ip, "cluster %s: the replacement of %s kept its IP", c.Name, name)
	return lab.PodRef{Cluster: c.Name, Name: name, IP: ip}, ready
}

// testChurn: c1's StatefulSet grows from 2 to 3 and the new name resolves
// in every cluster; a deleted db pod returns with a new IP and its name
// follows; then the time from Ready in one cluster to resolvable in
// another is measured over as many replacements as fit in a minute (or
// PODMESH_SERVICES_CHANGES of them).
func (m *mcsLab) testChurn(t *testing.T) {
	c1, c2, c3 := m.l.Cluster(1), m.l.Cluster(2), m.l.Cluster(3)
	m.apply(t, c1, "db-sts", m.dbStatefulSet(3, 0))
	refs := m.waitDB(t, c1, "db-0", "db-1", "db-2")
	observers := m.oneDBPodPerCluster(t)
	m.resolvesTo(t, observers, dbName(refs[2]), refs[2].IP)

	fresh, _ := m.replaceDBPod(t, c2, "db-2")
	observers = m.oneDBPodPerCluster(t) // c2's observer was the replaced pod
	m.resolvesTo(t, observers, dbName(fresh), fresh.IP)

	changes, budget := 0, time.Minute
	if s := os.Getenv("PODMESH_SERVICES_CHANGES"); s != "" {
		_, err := fmt.Sscan(s, &changes)
		require.NoError(t, err, "PODMESH_SERVICES_CHANGES")
		budget = 0
	}
	// The observer is c1's first db pod, the changing pod c3's db-3.
	from := observers[0]
	var took []time.Duration
	t0 := time.Now()
	for (budget > 0 && time.Since(t0) < budget) || len(took) < changes {
		p, ready := m.replaceDBPod(t, c3, "db-3")
		var ips []netip.Addr
		require.Eventually(t, func() bool {
			ips, _ = m.lookup(from, dbName(p))
			return slices.Equal(ips, []netip.Addr{p.IP})
		}, time.Minute, 5*time.Millisecond, "%s resolving %s to %s", from, dbName(p), p.IP)
		took = append(took, time.Since(ready))
	}
	slices.Sort(took)
	pct := func(q float64) time.Duration { return took[int(q*float64(len(took)-1)+0.5)] }
	t.Logf("MEASURED pod Ready in c3 (API) to its clusterset name resolving through c1's CoreDNS, DNS polled every 5ms: %d changes, p50 %v, p99 %v, min %v, max %v",
		len(took), pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
}

// webDeployment is the Deployment web: replicas echo pods labelled app=web.
func (m *mcsLab) webDeployment(replicas int32) *appsv1.Deployment {
	d := m.l.EchoDeployment(replicas)
	d.Name, d.Namespace = "web", svcNS
	d.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	d.Spec.Template = m.echoTemplate("web")
	return d
}

// serviceImport returns a field of ServiceImport svcNS/name in cluster c
// (kubectl jsonpath), or an error while it does not exist.
func (m *mcsLab) serviceImport(c *lab.Cluster, name, jsonpath string) (string, error) {
	out, err := m.l.Kubectl(m.ctx, c, "-n", svcNS, "get", "serviceimports.multicluster.x-k8s.io", name, "-o", "jsonpath="+jsonpath)
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, out)
	}
	return out, nil
}

// backendOf connects from pod from to the address to, checks that the
// receiver saw from's own pod IP, and returns the backend the connection
// went to: the reply source of its conntrack entry in the node's namespace
// (where kube-proxy's DNAT happens), looked for in the namespaces of nodes.
func backendOf(ctx context.Context, from lab.PodRef, nodes []*lab.Node, to netip.AddrPort) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := lab.DialIn(ctx, from.NetNS, "tcp", to.String())
	if err != nil {
		return netip.Addr{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return netip.Addr{}, fmt.Errorf("read from %s: %w", to, err)
	}
	seen, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("reply of %s: %w", to, err)
	}
	local := netip.MustParseAddrPort(conn.LocalAddr().String())
	if seen != local {
		return netip.Addr{}, fmt.Errorf("%s via %s: the receiver saw %s, the caller is %s", from, to, seen, local)
	}
	for _, n := range nodes {
		var flows []*netlink.ConntrackFlow
		if err := kubetest.InNetNS(lab.NetNSPath(n.NetNS), func() error {
			var err error
			flows, err = netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
			return err
		}); err != nil {
			return netip.Addr{}, fmt.Errorf("conntrack on %s: %w", n.Name, err)
		}
		for _, f := range flows {
			src, _ := netip.AddrFromSlice(f.Forward.SrcIP)
			dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
			if src.Unmap() == local.Addr() && f.Forward.SrcPort == local.Port() && dst.Unmap() == to.Addr() && f.Forward.DstPort == to.Port() {
				backend, _ := netip.AddrFromSlice(f.Reverse.SrcIP)
				return backend.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("no conntrack entry for %s -> %s on any node", local, to)
}

// clusterOf maps the web pods' IPs to their cluster.
func (m *mcsLab) webBackends(t *testing.T, clusters ...*lab.Cluster) map[netip.Addr]string {
	t.Helper()
	out := map[netip.Addr]string{}
	for _, c := range clusters {
		for _, p := range m.readyPods(t, c, svcNS, "app=web") {
			out[p.IP] = c.Name
		}
	}
	return out
}

// testGlobalService: web runs in c1 and c2 (2 pods each) and is exported
// from both; in c3 its clusterset name resolves to the ServiceImport's IP
// (the derived Service), and connections to it (kube-proxy) reach every
// backend of both clusters with the caller's own IP; with c1's web scaled
// to 0 every connection goes to c2.
func (m *mcsLab) testGlobalService(t *testing.T) {
	c1, c2, c3 := m.l.Cluster(1), m.l.Cluster(2), m.l.Cluster(3)
	for _, c := range []*lab.Cluster{c1, c2} {
		m.apply(t, c, "web-deploy", m.webDeployment(2))
		m.apply(t, c, "web-svc", echoService("web", false, 80))
		m.apply(t, c, "web-export", serviceExport("web"))
	}
	for _, c := range []*lab.Cluster{c1, c2} {
		m.kubectl(t, c, "-n", svcNS, "rollout", "status", "deploy/web", "--timeout=2m")
	}
	var ipStr string
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		var err error
		ipStr, err = m.serviceImport(c3, "web", "{.spec.ips[0]}")
		require.NoError(ct, err)
		require.NotEmpty(ct, ipStr, "ServiceImport web in c3 has no spec.ips")
	}, 2*time.Minute, 100*time.Millisecond)
	clusterIP := netip.MustParseAddr(ipStr)
	from := m.readyPods(t, c3, svcNS, "app=db")[0]
	m.resolvesTo(t, []lab.PodRef{from}, "web."+svcNS+".svc.clusterset.local", clusterIP)
	to := netip.AddrPortFrom(clusterIP, 80)
	nodes := c3.NodeList()

	backends := m.webBackends(t, c1, c2)
	require.Len(t, backends, 4)
	reached := map[netip.Addr]int{}
	conns := 0
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		b, err := backendOf(m.ctx, from, nodes, to)
		require.NoError(ct, err)
		conns++
		_, known := backends[b]
		require.True(ct, known, "connection to %s reached %s, not a web pod", to, b)
		reached[b]++
		require.Len(ct, reached, len(backends), "backends reached so far: %v", reached)
	}, 2*time.Minute, 20*time.Millisecond)
	t.Logf("%s -> web's ClusterSetIP %s: %d connections reached every web pod of c1 and c2: %v", from, to, conns, reached)

	m.apply(t, c1, "web-deploy", m.webDeployment(0))
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		pods, err := c1.Kube.Client.CoreV1().Pods(svcNS).List(m.ctx, metav1.ListOptions{LabelSelector: "app=web"})
		require.NoError(ct, err)
		require.Empty(ct, pods.Items, "c1 web pods")
	}, 2*time.Minute, 100*time.Millisecond)
	c2Backends := m.webBackends(t, c2)
	// Until c3's kube-proxy has dropped c1's endpoints a connection may
	// still be sent there and fail; then 20 in a row must reach c2.
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		for range 20 {
			b, err := backendOf(m.ctx, from, nodes, to)
			require.NoError(ct, err)
			require.Contains(ct, c2Backends, b, "connection reached %s, not a c2 web pod", b)
		}
	}, 2*time.Minute, 100*time.Millisecond)
	for range 50 {
		b, err := backendOf(m.ctx, from, nodes, to)
		require.NoError(t, err)
		require.Contains(t, c2Backends, b, "with c1's web scaled to 0, a connection reached %s", b)
	}
	t.Logf("c1's web scaled to 0: 50 connections from c3 all reached c2's web pods")
}

// exportCondition returns the status and reason of the ServiceExport
// svcNS/name's condition typ in cluster c.
func (m *mcsLab) exportCondition(c *lab.Cluster, name, typ string) (string, error) {
	out, err := m.l.Kubectl(m.ctx, c, "-n", svcNS, "get", "serviceexports.multicluster.x-k8s.io", name, "-o",
		`jsonpath={.status.conditions[?(@.type=="`+typ+`")].status} {.status.conditions[?(@.type=="`+typ+`")].reason} {.status.conditions[?(@.type=="`+typ+`")].message}`)
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, out)
	}
	return out, nil
}

// testConflictAndPrivacy: conf is exported by c2 first (port tcp/7777),
// then by c1 with tcp/7778: the older (c2's) port wins everywhere, and the
// Conflict condition says PortConflict in both exporting clusters; c1's
// Service private (selecting the db pods, no ServiceExport) reaches no
// other cluster.
func (m *mcsLab) testConflictAndPrivacy(t *testing.T) {
	c1, c2, c3 := m.l.Cluster(1), m.l.Cluster(2), m.l.Cluster(3)
	private := echoService("private", false, 80)
	private.Spec.Selector = map[string]string{"app": "db"}
	m.apply(t, c1, "private-svc", private)
	m.apply(t, c2, "conf-svc", echoService("conf", false, lab.ServeTCPPort))
	m.apply(t, c2, "conf-export", serviceExport("conf"))
	var created time.Time
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		ts, err := m.l.Kubectl(m.ctx, c2, "-n", svcNS, "get", "serviceexports.multicluster.x-k8s.io", "conf", "-o", "jsonpath={.metadata.creationTimestamp}")
		require.NoError(ct, err, ts)
		created, err = time.Parse(time.RFC3339, ts)
		require.NoError(ct, err)
		_, err = m.serviceImport(c1, "conf", "{.spec.ports}")
		require.NoError(ct, err, "c2's conf imported into c1")
	}, 2*time.Minute, 100*time.Millisecond)
	// Creation times have a resolution of one second and ties go to the
	// cluster name (c1 first): wait until c1's export is strictly younger.
	require.Eventually(t, func() bool { return time.Now().After(created.Add(time.Second)) }, 5*time.Second, 50*time.Millisecond)
	m.apply(t, c1, "conf-svc", echoService("conf", false, lab.ServeTCPPort+1))
	m.apply(t, c1, "conf-export", serviceExport("conf"))

	for _, c := range []*lab.Cluster{c1, c2} {
		require.EventuallyWithT(t, func(ct *assert.CollectT) {
			cond, err := m.exportCondition(c, "conf", "Conflict")
			require.NoError(ct, err)
			require.True(ct, strings.HasPrefix(cond, "True "), "cluster %s: Conflict condition %q", c.Name, cond)
			require.Contains(ct, cond, "PortConflict", "cluster %s: Conflict condition", c.Name)
		}, 2*time.Minute, 100*time.Millisecond)
		cond, _ := m.exportCondition(c, "conf", "Conflict")
		t.Logf("cluster %s: ServiceExport conf Conflict condition: %s", c.Name, cond)
	}
	for _, c := range m.l.Clusters() {
		require.EventuallyWithT(t, func(ct *assert.CollectT) {
			ports, err := m.serviceImport(c, "conf", "{.spec.ports[*].port}")
			require.NoError(ct, err)
			require.Equal(ct, fmt.Sprint(lab.ServeTCPPort), ports, "cluster %s: ServiceImport conf ports", c.Name)
			clusters, err := m.serviceImport(c, "conf", "{.status.clusters[*].cluster}")
			require.NoError(ct, err)
			require.Equal(ct, "c1 c2", clusters, "cluster %s: ServiceImport conf clusters", c.Name)
		}, 2*time.Minute, 100*time.Millisecond)
	}
	// c1's later export of conf reached every cluster after private was
	// created in c1: private would have too.
	for _, c := range []*lab.Cluster{c2, c3} {
		_, err := m.serviceImport(c, "private", "{.metadata.name}")
		require.Error(t, err, "cluster %s: ServiceImport private exists", c.Name)
		require.Contains(t, err.Error(), "NotFound")
		eps, err := c.Kube.Client.DiscoveryV1().EndpointSlices(svcNS).List(m.ctx, metav1.ListOptions{LabelSelector: "multicluster.kubernetes.io/service-name=private"})
		require.NoError(t, err)
		require.Empty(t, eps.Items, "cluster %s: imported slices of private", c.Name)
		svcs, err := c.Kube.Client.CoreV1().Services(svcNS).List(m.ctx, metav1.ListOptions{})
		require.NoError(t, err)
		for _, s := range svcs.Items {
			require.NotEqual(t, "private", s.Name, "cluster %s", c.Name)
		}
	}
}

// testMeshAPIServerKilled: c2's clustermesh-apiserver pod is deleted; c2's
// db name keeps resolving in c1 and c3 all along; once the replacement is
// Ready, a new pod IP in c2 is followed (the importers resynced) and the
// service name lists exactly the Ready pods.
func (m *mcsLab) testMeshAPIServerKilled(t *testing.T) {
	c2 := m.l.Cluster(2)
	target := m.readyPods(t, c2, svcNS, "app=db")[0]
	observers := []lab.PodRef{m.readyPods(t, m.l.Cluster(1), svcNS, "app=db")[0], m.readyPods(t, m.l.Cluster(3), svcNS, "app=db")[0]}
	m.resolvesTo(t, observers, dbName(target), target.IP)
	const sel = "app.kubernetes.io/name=clustermesh-apiserver"
	before := m.readyPods(t, c2, lab.PodmeshNamespace, sel)
	require.Len(t, before, 1)
	m.kubectl(t, c2, "-n", lab.PodmeshNamespace, "delete", "pod", before[0].Name, "--wait=false")
	lookups, failed := 0, 0
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		for _, o := range observers {
			ips, err := m.lookup(o, dbName(target))
			lookups++
			if err != nil || !slices.Equal([]netip.Addr{target.IP}, ips) {
				failed++
				t.Errorf("%s resolving %s while c2's clustermesh-apiserver is replaced: %v %v", o, dbName(target), ips, err)
			}
		}
		now, err := m.l.ReadyPodRefs(m.ctx, c2, lab.PodmeshNamespace, sel)
		require.NoError(ct, err)
		require.Len(ct, now, 1)
		require.NotEqual(ct, before[0].Name, now[0].Name, "the deleted pod is still there")
	}, 3*time.Minute, 50*time.Millisecond)
	require.Zero(t, failed, "failed lookups of %d", lookups)
	t.Logf("%s resolved in c1 and c3 in all %d lookups while c2's clustermesh-apiserver pod was replaced", dbName(target), lookups)

	// The replaced clustermesh-apiserver's etcd starts empty behind the same
	// address: the importers must list it again rather than resume their
	// watch at the old revision, or they miss this change (found in a cold
	// CI run; kvstore.ConnectionLost).
	fresh, _ := m.replaceDBPod(t, c2, target.Name)
	m.resolvesTo(t, observers, dbName(fresh), fresh.IP)
	var all []netip.Addr
	for _, c := range m.l.Clusters() {
		for _, p := range m.readyPods(t, c, svcNS, "app=db") {
			all = append(all, p.IP)
		}
	}
	m.resolvesTo(t, observers, "db."+svcNS+".svc.clusterset.local", all...)
}
