package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/template"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/test/kubetest"
)

// Names of what daemonset/base creates, as docs/install.md uses them.
const (
	PodmeshNamespace     = "podmesh-system"
	AgentDaemonSet       = "podmesh-agent"
	APIServerDeployment  = "clustermesh-apiserver"
	MeshSecret           = "podmesh-clustermesh"
	APIServerTLSSecret   = "clustermesh-apiserver-tls"
	APIServerNodePort    = 32379
	serverCertNodeIPSANs = 16 // node IPs the proxy's certificate is valid for
)

// Kubectl runs the tools' kubectl against cluster c with its admin
// kubeconfig, inside the control-plane namespace (where the API server's
// address is reachable), and returns its combined output.
func (l *Lab) Kubectl(ctx context.Context, c *Cluster, args ...string) (string, error) {
	argv := append([]string{l.Bin("kubectl"), "--kubeconfig", c.Kube.Kubeconfig}, args...)
	out, err := output(ctx, c.NetNS, argv...)
	return string(out), err
}

// InstallPodmesh installs podmesh on cluster c the way docs/install.md
// tells a user to: an overlay of daemonset/ with the cluster's identity and
// the lab's image references, `kubectl apply -k`, then the
// clustermesh-apiserver's TLS Secret and the clustermesh Secret for every
// other cluster of the lab (what `podmesh-certs server-secret` and
// `connect` render), applied with `kubectl apply -f`. Peers reach the
// proxy on the NodePort (32379) of every node. It waits until the agent
// DaemonSet and the clustermesh-apiserver Deployment are rolled out.
func (l *Lab) InstallPodmesh(ctx context.Context, c *Cluster) error {
	t0 := time.Now()
	overlay, err := l.writeOverlay(c)
	if err != nil {
		return err
	}
	if out, err := l.Kubectl(ctx, c, "apply", "-k", overlay); err != nil {
		return fmt.Errorf("cluster %s: kubectl apply -k: %w: %s", c.Name, err, out)
	}
	tls, err := l.apiServerTLSSecret(c)
	if err != nil {
		return err
	}
	mesh, err := l.meshSecret(c, nil)
	if err != nil {
		return err
	}
	cache, err := cacheSecret(c)
	if err != nil {
		return err
	}
	for _, s := range []*corev1.Secret{tls, mesh, cache} {
		if err := l.ApplyObject(ctx, c, s.Name, s); err != nil {
			return err
		}
	}
	if err := l.WaitPodmeshRolledOut(ctx, c, 3*time.Minute); err != nil {
		return err
	}
	l.progress("cluster %s: podmesh installed from daemonset/ and rolled out in %.1fs", c.Name, time.Since(t0).Seconds())
	return nil
}

// ApplyObject writes obj as YAML under the cluster's state directory and
// applies it with kubectl apply -f.
func (l *Lab) ApplyObject(ctx context.Context, c *Cluster, name string, obj any) error {
	data, err := yaml.Marshal(obj)
	if err != nil {
		return fmt.Errorf("encode %s: %w", name, err)
	}
	dir := filepath.Join(c.dir, "manifests")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if out, err := l.Kubectl(ctx, c, "apply", "-f", path); err != nil {
		return fmt.Errorf("cluster %s: kubectl apply -f %s: %w: %s", c.Name, path, err, out)
	}
	return nil
}

// repoDir is the podmesh checkout holding daemonset/.
func (l *Lab) repoDir() (string, error) {
	if l.opts.RepoDir != "" {
		return l.opts.RepoDir, nil
	}
	bin, err := kubetest.BinDir()
	if err != nil {
		return "", err
	}
	if os.Getenv("PODMESH_BIN") == "" {
		return filepath.Dir(bin), nil
	}
	// PODMESH_BIN points anywhere: find the module from the working directory.
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "daemonset", "base", "kustomization.yaml")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find daemonset/: not below a podmesh checkout (set Options.RepoDir)")
		}
		dir = parent
	}
}

// overlayTmpl is the overlay a user writes per cluster (docs/install.md
// step 3): the base, the cluster's identity in podmesh-config, and the
// images the nodes hold (the lab's own build, never pulled).
var overlayTmpl = template.Must(template.New("overlay").Parse(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../base
images:
  - name: ghcr.io/podmesh/podmesh-agent
    newName: {{.AgentName}}
    newTag: {{.AgentTag}}
  - name: ghcr.io/podmesh/clustermesh-apiserver
    newName: {{.APIServerName}}
    newTag: {{.APIServerTag}}
patches:
  - target:
      kind: ConfigMap
      name: podmesh-config
    patch: |-
      - op: replace
        path: /data
        value:
          cluster-name: {{.Cluster}}
          cluster-id: "{{.ID}}"
          pod-cidrs: {{.PodCIDRs}}
          routing-mode: {{.Mode}}
          tunnel-port: "{{.TunnelPort}}"
          allowed-peers: {{.AllowedPeers}}
{{- if .APIServerReplicas}}
  - target:
      kind: Deployment
      name: clustermesh-apiserver
    patch: |-
      - op: replace
        path: /spec/replicas
        value: {{.APIServerReplicas}}
{{- end}}
`))

// writeOverlay copies daemonset/base into the lab's state directory (once)
// and writes cluster c's overlay next to it; it returns the overlay's path.
func (l *Lab) writeOverlay(c *Cluster) (string, error) {
	repo, err := l.repoDir()
	if err != nil {
		return "", err
	}
	root := filepath.Join(l.StateDir, "podmesh")
	base := filepath.Join(root, "base")
	if _, err := os.Stat(base); errors.Is(err, os.ErrNotExist) {
		if err := os.CopyFS(base, os.DirFS(filepath.Join(repo, "daemonset", "base"))); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("copy daemonset/base: %w", err)
		}
	}
	agent, apiserver := l.opts.Images.Ref("podmesh-agent"), l.opts.Images.Ref("clustermesh-apiserver")
	if agent == "" || apiserver == "" {
		return "", errors.New("the lab's images lack podmesh-agent or clustermesh-apiserver")
	}
	var peers []string
	for _, o := range l.Clusters() {
		if o != c {
			peers = append(peers, certs.PeerCN(o.Name))
		}
	}
	c.AllowedPeers = peers
	split := func(ref string) (string, string) {
		k := strings.LastIndexByte(ref, ':')
		return ref[:k], ref[k+1:]
	}
	d := map[string]string{
		"Cluster": c.Name, "ID": itoa(int(c.ID)), "PodCIDRs": joinPrefixes(c.PodCIDRs), "Mode": l.RoutingMode(),
		"TunnelPort": itoa(TunnelPort), "AllowedPeers": strings.Join(peers, ","),
		"APIServerReplicas": "",
	}
	if n := l.opts.APIServerReplicas; n > 0 {
		d["APIServerReplicas"] = itoa(n)
	}
	d["AgentName"], d["AgentTag"] = split(agent)
	d["APIServerName"], d["APIServerTag"] = split(apiserver)
	dir := filepath.Join(root, "overlays", c.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	return dir, writeTemplate(filepath.Join(dir, "kustomization.yaml"), overlayTmpl, d)
}

// apiServerTLSSecret is clustermesh-apiserver-tls for cluster c: a serving
// certificate from c's CA valid for its nodes' IPs (the NodePort's
// addresses), as `podmesh-certs server-secret` renders it.
func (l *Lab) apiServerTLSSecret(c *Cluster) (*corev1.Secret, error) {
	ips := []net.IP{net.IP(c.IP.AsSlice())}
	for j := 1; j <= serverCertNodeIPSANs; j++ {
		ips = append(ips, net.IP(NodeIP(c.Index, j).AsSlice()))
	}
	kp, err := c.CA.IssueServer(certs.Options{
		CommonName:  "clustermesh-apiserver." + c.Name,
		DNSNames:    []string{"clustermesh-apiserver", "clustermesh-apiserver.podmesh-system.svc", certs.CacheServiceName + ".podmesh-system.svc"},
		IPAddresses: ips,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: proxy serving certificate: %w", c.Name, err)
	}
	return secret(APIServerTLSSecret, map[string][]byte{"tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM, "ca.crt": c.CA.CertPEM}), nil
}

// cacheSecret is podmesh-cache for cluster c, as `podmesh-certs
// cache-secret` renders it: c's own agents' credential (CN local-<c>, from
// c's CA) for c's cache Service.
func cacheSecret(c *Cluster) (*corev1.Secret, error) {
	kp, err := c.CA.IssueClient(certs.Options{CommonName: certs.LocalCN(c.Name)})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: cache client certificate: %w", c.Name, err)
	}
	files, err := certs.CacheSecretFiles([]string{certs.CacheEndpoint(PodmeshNamespace)}, c.CA.CertPEM, kp.CertPEM, kp.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	return secret(certs.CacheSecretName, files), nil
}

// meshSecret is podmesh-clustermesh for cluster c: the files of every
// remote in cfgs (the correct ones of every other cluster when nil: its
// proxy's NodePort endpoints on each of its nodes, its CA and the client
// certificate remote-<c> its CA issued), under the keys `podmesh-certs
// connect` writes. The nodes of c record the remotes they are configured
// with.
func (l *Lab) meshSecret(c *Cluster, cfgs []RemoteConfig) (*corev1.Secret, error) {
	if cfgs == nil {
		var err error
		if cfgs, err = l.MeshConfigs(c); err != nil {
			return nil, err
		}
	}
	files := map[string][]byte{}
	var names []string
	for _, r := range cfgs {
		rf, err := certs.MeshSecretFiles(r.Name, r.Endpoints, r.CAPEM, r.CertPEM, r.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: config of %s: %w", c.Name, r.Name, err)
		}
		maps.Copy(files, rf)
		names = append(names, r.Name)
	}
	l.mu.Lock()
	for _, n := range c.Nodes {
		n.remotes = slices.Clone(names)
	}
	l.mu.Unlock()
	return secret(MeshSecret, files), nil
}

func secret(name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: PodmeshNamespace},
		Data:       data,
	}
}

// WaitPodmeshRolledOut waits until every agent pod of the DaemonSet runs the
// current template and is Ready on every node, and the clustermesh-apiserver
// Deployment has its ready replica.
func (l *Lab) WaitPodmeshRolledOut(ctx context.Context, c *Cluster, timeout time.Duration) error {
	kc := c.Kube.Client
	return waitFor(ctx, timeout, 200*time.Millisecond, "podmesh rolled out on "+c.Name, func() (bool, error) {
		ds, err := kc.AppsV1().DaemonSets(PodmeshNamespace).Get(ctx, AgentDaemonSet, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if err := daemonSetRolledOut(ds); err != nil {
			return false, fmt.Errorf("%w%s", err, l.podProblems(ctx, c, PodmeshNamespace))
		}
		dep, err := kc.AppsV1().Deployments(PodmeshNamespace).Get(ctx, APIServerDeployment, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if err := deploymentRolledOut(dep); err != nil {
			return false, fmt.Errorf("%w%s", err, l.podProblems(ctx, c, PodmeshNamespace))
		}
		return true, nil
	})
}

func daemonSetRolledOut(ds *appsv1.DaemonSet) error {
	s := ds.Status
	if ds.Generation > s.ObservedGeneration || s.DesiredNumberScheduled == 0 ||
		s.UpdatedNumberScheduled != s.DesiredNumberScheduled || s.NumberReady != s.DesiredNumberScheduled || s.NumberAvailable != s.DesiredNumberScheduled {
		return fmt.Errorf("daemonset %s: desired %d, updated %d, ready %d, available %d",
			ds.Name, s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady, s.NumberAvailable)
	}
	return nil
}

func deploymentRolledOut(d *appsv1.Deployment) error {
	s := d.Status
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	if d.Generation > s.ObservedGeneration || s.UpdatedReplicas != want || s.ReadyReplicas != want || s.Replicas != want {
		return fmt.Errorf("deployment %s: want %d, updated %d, ready %d, total %d", d.Name, want, s.UpdatedReplicas, s.ReadyReplicas, s.Replicas)
	}
	return nil
}

// podProblems describes the pods of a namespace that are not Ready (their
// waiting reasons and messages), for error messages.
func (l *Lab) podProblems(ctx context.Context, c *Cluster, ns string) string {
	pods, err := c.Kube.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return ""
	}
	var b bytes.Buffer
	for _, p := range pods.Items {
		if podReady(&p) {
			continue
		}
		fmt.Fprintf(&b, "\n  pod %s on %q: %s", p.Name, p.Spec.NodeName, p.Status.Phase)
		for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			if w := cs.State.Waiting; w != nil {
				fmt.Fprintf(&b, "; %s waiting: %s %s", cs.Name, w.Reason, w.Message)
			}
			if t := cs.State.Terminated; t != nil {
				fmt.Fprintf(&b, "; %s terminated: %s (exit %d) %s", cs.Name, t.Reason, t.ExitCode, t.Message)
			}
			if t := cs.LastTerminationState.Terminated; t != nil {
				fmt.Fprintf(&b, "; %s last exit %d %s", cs.Name, t.ExitCode, strings.TrimSpace(t.Message))
			}
		}
		for _, cond := range p.Status.Conditions {
			if cond.Status != corev1.ConditionTrue && cond.Message != "" {
				fmt.Fprintf(&b, "; %s: %s", cond.Type, cond.Message)
			}
		}
	}
	return b.String()
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// RestartAgents rolls the agent DaemonSet of cluster c (`kubectl rollout
// restart`, one node at a time as its updateStrategy says) and waits until
// every node runs a new, Ready agent pod.
func (l *Lab) RestartAgents(ctx context.Context, c *Cluster) error {
	if out, err := l.Kubectl(ctx, c, "-n", PodmeshNamespace, "rollout", "restart", "daemonset/"+AgentDaemonSet); err != nil {
		return fmt.Errorf("cluster %s: rollout restart: %w: %s", c.Name, err, out)
	}
	return l.WaitPodmeshRolledOut(ctx, c, 3*time.Minute)
}

// SwitchRoutingMode changes every cluster's routing-mode in its overlay,
// applies it, rolls the agents and waits for the mesh to converge in the
// new mode.
func (l *Lab) SwitchRoutingMode(ctx context.Context, mode string) error {
	l.SetRoutingMode(mode)
	clusters := l.Clusters()
	if err := parallel(len(clusters), func(k int) error {
		c := clusters[k]
		overlay, err := l.writeOverlay(c)
		if err != nil {
			return err
		}
		if out, err := l.Kubectl(ctx, c, "apply", "-k", overlay); err != nil {
			return fmt.Errorf("cluster %s: kubectl apply -k: %w: %s", c.Name, err, out)
		}
		l.mu.Lock()
		for _, n := range c.Nodes {
			n.Mode = mode
		}
		l.mu.Unlock()
		return l.RestartAgents(ctx, c)
	}); err != nil {
		return err
	}
	return l.WaitConverged(ctx, 3*time.Minute)
}

// DeleteMeshSecret deletes cluster c's podmesh-clustermesh Secret (kubectl
// delete): its agents lose every remote once the kubelet refreshes their
// (optional) Secret volume. The lab then expects no remote on c's nodes.
func (l *Lab) DeleteMeshSecret(ctx context.Context, c *Cluster) error {
	if out, err := l.Kubectl(ctx, c, "-n", PodmeshNamespace, "delete", "secret", MeshSecret); err != nil {
		return fmt.Errorf("cluster %s: delete secret: %w: %s", c.Name, err, out)
	}
	l.mu.Lock()
	for _, n := range c.Nodes {
		n.remotes = nil
	}
	l.mu.Unlock()
	return nil
}

// ApplyMeshSecret applies cluster c's podmesh-clustermesh Secret with the
// given remotes' files (none given: the correct ones of every other
// cluster). The kubelet refreshes the agents' Secret volume with it.
func (l *Lab) ApplyMeshSecret(ctx context.Context, c *Cluster, cfgs ...RemoteConfig) error {
	s, err := l.meshSecret(c, cfgs)
	if err != nil {
		return err
	}
	return l.ApplyObject(ctx, c, s.Name, s)
}
