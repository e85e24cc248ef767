package lab_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/test/lab"
)

// TestInstallDocOnTwoRealClusters follows docs/install.md step by step on
// two real lab clusters named east and west (IDs 1 and 2, pods in
// 10.1.0.0/16 and 10.2.0.0/16, as the doc's example overlays say): the
// podmesh-certs commands, the overlays copied from daemonset/overlays with
// the lab's images set, kubectl apply -k and apply -f, rollout status, and
// ends with `kubectl exec … -- podmesh-agent status` showing the peer ready
// on every node.
func TestInstallDocOnTwoRealClusters(t *testing.T) {
	testutils.RequireRoot(t)
	o := realLabOptions(t)
	ctx := withTimeout(t, 10*time.Minute)
	l, err := lab.New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if lo, _ := lab.Discover(o.Prefix, ""); !lo.Empty() {
			t.Errorf("lab %s left %s behind", o.Prefix, lo)
		}
	})
	names := map[int]string{1: "east", 2: "west"}
	clusters := map[string]*lab.Cluster{}
	for i := 1; i <= 2; i++ {
		c, err := l.AddCluster(ctx, lab.ClusterSpec{Index: i, Name: names[i]})
		if err != nil {
			t.Fatal(err)
		}
		for j := 1; j <= 2; j++ {
			if _, err := l.AddKubeNode(ctx, c, j); err != nil {
				t.Fatal(err)
			}
		}
		clusters[names[i]] = c
	}
	certsBin := buildBinaries(t, "podmesh-certs")
	work := t.TempDir()
	sh := func(argv ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Dir = work
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
		return string(out)
	}
	kubectl := func(c *lab.Cluster, args ...string) string {
		t.Helper()
		out, err := l.Kubectl(ctx, c, args...)
		if err != nil {
			t.Fatalf("kubectl --context %s %s: %v\n%s", c.Name, strings.Join(args, " "), err, out)
		}
		return out
	}
	certsCmd := filepath.Join(certsBin, "podmesh-certs")
	nodeIPs := func(c *lab.Cluster) []string {
		var ips []string
		for _, n := range c.NodeList() {
			ips = append(ips, n.IP.String())
		}
		return ips
	}
	repeat := func(flag string, vals []string) []string {
		var out []string
		for _, v := range vals {
			out = append(out, flag, v)
		}
		return out
	}
	east, west := clusters["east"], clusters["west"]

	// 1. Create each cluster's CA and proxy certificate.
	for _, c := range []*lab.Cluster{east, west} {
		sh(certsCmd, "init", "--dir", "pki/"+c.Name, "--cluster", c.Name)
		sh(append([]string{certsCmd, "server", "--dir", "pki/" + c.Name}, repeat("--ip", nodeIPs(c))...)...)
	}
	// 2. Issue the peer certificates and render the Secrets.
	for _, pair := range [][2]*lab.Cluster{{east, west}, {west, east}} {
		serving, peer := pair[0], pair[1]
		sh(certsCmd, "peer", "--dir", "pki/"+serving.Name, "--peer", peer.Name)
		sh(append(append([]string{certsCmd, "connect", "--dir", "pki/" + serving.Name, "--peer", peer.Name},
			repeat("--address", nodeIPs(serving))...), "--out", peer.Name+"-clustermesh.yaml")...)
		sh(certsCmd, "server-secret", "--dir", "pki/"+serving.Name, "--out", serving.Name+"-apiserver-tls.yaml")
		// Each cluster's own agents' credential for its cache (the default
		// mesh mode).
		sh(certsCmd, "cache-secret", "--dir", "pki/"+serving.Name, "--out", serving.Name+"-cache.yaml")
	}
	// 3. Write each cluster's overlay: a copy of the example, with the
	// registry and tag of the images the nodes hold.
	repo := moduleRootT(t)
	if err := os.CopyFS(filepath.Join(work, "daemonset"), os.DirFS(filepath.Join(repo, "daemonset"))); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*lab.Cluster{east, west} {
		peers := strings.TrimSpace(sh(certsCmd, "allowed-peers", "--dir", "pki/"+c.Name))
		path := filepath.Join(work, "daemonset", "overlays", c.Name, "kustomization.yaml")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s := string(data)
		if !strings.Contains(s, "allowed-peers: "+peers) {
			t.Fatalf("overlay %s: allowed-peers is not %q (podmesh-certs allowed-peers):\n%s", c.Name, peers, s)
		}
		s = setImage(t, s, "ghcr.io/podmesh/podmesh-agent", o.Images.Ref("podmesh-agent"))
		s = setImage(t, s, "ghcr.io/podmesh/clustermesh-apiserver", o.Images.Ref("clustermesh-apiserver"))
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// 4. Apply.
	for _, c := range []*lab.Cluster{east, west} {
		kubectl(c, "apply", "-k", filepath.Join(work, "daemonset", "overlays", c.Name))
		kubectl(c, "apply", "-f", filepath.Join(work, c.Name+"-apiserver-tls.yaml"))
		kubectl(c, "apply", "-f", filepath.Join(work, c.Name+"-clustermesh.yaml"))
		kubectl(c, "apply", "-f", filepath.Join(work, c.Name+"-cache.yaml"))
	}
	// 5. Check.
	for _, c := range []*lab.Cluster{east, west} {
		kubectl(c, "-n", "podmesh-system", "rollout", "status", "ds/podmesh-agent", "--timeout=3m")
		kubectl(c, "-n", "podmesh-system", "rollout", "status", "deploy/clustermesh-apiserver", "--timeout=3m")
	}
	for _, pair := range [][2]*lab.Cluster{{east, west}, {west, east}} {
		c, peer := pair[0], pair[1]
		pods, err := c.Kube.Client.CoreV1().Pods("podmesh-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=podmesh-agent"})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) != 2 {
			t.Fatalf("cluster %s: %d agent pods, want one per node (2)", c.Name, len(pods.Items))
		}
		// The agents pick the Secret up when the kubelet refreshes the
		// volume; the doc says to check until the peer shows ready.
		peerRow := regexp.MustCompile(`(?m)^` + peer.Name + `\s+\d+\s+yes\s`)
		for _, p := range pods.Items {
			var out string
			eventually(t, 3*time.Minute, fmt.Sprintf("podmesh-agent status on %s shows %s ready", p.Spec.NodeName, peer.Name), func() error {
				var err error
				out, err = l.Kubectl(ctx, c, "-n", "podmesh-system", "exec", "pod/"+p.Name, "--", "podmesh-agent", "status")
				if err != nil {
					return fmt.Errorf("%w: %s", err, out)
				}
				if !peerRow.MatchString(out) {
					return fmt.Errorf("not ready yet:\n%s", out)
				}
				return nil
			})
			t.Logf("cluster %s, node %s: kubectl exec %s -- podmesh-agent status:\n%s", c.Name, p.Spec.NodeName, p.Name, out)
		}
	}
}

// setImage sets newName of the overlay's images: entry for name.
func setImage(t *testing.T, overlay, name, ref string) string {
	t.Helper()
	k := strings.LastIndexByte(ref, ':')
	newName, tag := ref[:k], ref[k+1:]
	re := regexp.MustCompile(`(?m)^(\s*)- name: ` + regexp.QuoteMeta(name) + `\n(\s*)newTag: \S+\n`)
	if !re.MatchString(overlay) {
		t.Fatalf("overlay has no images entry for %s:\n%s", name, overlay)
	}
	return re.ReplaceAllString(overlay, "${1}- name: "+name+"\n${2}newName: "+newName+"\n${2}newTag: "+tag+"\n")
}

func moduleRootT(t *testing.T) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
