package upgrade_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/test/chaos/soak"
	"github.com/podmesh/podmesh/test/lab"
	"github.com/podmesh/podmesh/test/upgrade"
)

// previousTag is the release the test upgrades from and downgrades to;
// PODMESH_UPGRADE_FROM names another tag.
const previousTag = "v0.1.0"

// TestUpgradeAndDowngradeUnderTrafficLoseNothing installs the previous
// release (its daemonset/ and images, built from the tag) on 2 real
// clusters x 2 nodes, then, under a UDP flow and a TCP stream from every
// echo pod to every echo pod of the other cluster, upgrades c1's
// clustermesh-apiserver, then c1's agents (a mixed mesh: old agents read
// a new clustermesh-apiserver and new agents an old one), then c2; and
// downgrades again the same way. After every step the mesh converges, the
// matrix holds and each pod runs the image the step says; at the end of
// each direction no datagram was lost and no stream broke.
func TestUpgradeAndDowngradeUnderTrafficLoseNothing(t *testing.T) {
	testutils.RequireRoot(t)
	if os.Getenv("PODMESH_UPGRADE") == "" {
		t.Skip("set PODMESH_UPGRADE=1 (make test-upgrade) to run: it brings up its own real lab")
	}
	tag := previousTag
	if v := os.Getenv("PODMESH_UPGRADE_FROM"); v != "" {
		tag = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	repo := moduleRoot(t)
	t0 := time.Now()
	oldDir, newDir := t.TempDir(), t.TempDir()
	old, oldImages, err := upgrade.BuildTagged(ctx, repo, tag, oldDir)
	if err != nil {
		t.Fatal(err)
	}
	newImages, err := lab.BuildImages(ctx, newDir)
	if err != nil {
		t.Fatal(err)
	}
	// Say whether the binaries differ at all (both builds are reproducible:
	// -trimpath, no VCS stamp), so a reader knows what the run proved.
	for _, b := range []string{"podmesh-agent", "clustermesh-apiserver"} {
		o, err1 := os.ReadFile(filepath.Join(oldDir, "images", "bin", b))
		n, err2 := os.ReadFile(filepath.Join(newDir, "bin", b))
		if err1 == nil && err2 == nil {
			t.Logf("%s of %s and current: identical binaries: %v", b, tag, bytes.Equal(o, n))
		}
	}
	cur := upgrade.Release{Name: "current", SrcDir: repo, Agent: newImages.Ref("podmesh-agent"), APIServer: newImages.Ref("clustermesh-apiserver")}
	t.Logf("images of %s (%s, %s) and current (%s, %s) built in %.1fs", tag, old.Agent, old.APIServer, cur.Agent, cur.APIServer, time.Since(t0).Seconds())
	if old.Agent == cur.Agent {
		t.Fatalf("the old and the current agent image have one reference %s: the upgrade would change nothing", old.Agent)
	}

	// The lab installs the old release: its images come first in the set.
	l := soak.UpTestLab(t, ctx, append(oldImages, newImages...), old.SrcDir, lab.Topology{Clusters: 2, Nodes: 2, Pods: 1})
	c1, c2 := l.Cluster(1), l.Cluster(2)
	expectImages(t, ctx, l, map[*lab.Cluster][2]string{c1: {old.Agent, old.APIServer}, c2: {old.Agent, old.APIServer}})
	dir := t.TempDir()

	type step struct {
		what               string
		c                  *lab.Cluster
		agent, apiserver   upgrade.Release
		c1Images, c2Images [2]string
	}
	run := func(direction string, steps []step) {
		eps, err := soak.Endpoints(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		watches := watchPrefixes(t, l)
		traffic, err := soak.StartTraffic(ctx, eps, soak.TrafficOptions{UDPInterval: 5 * time.Millisecond, TCPInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for _, s := range steps {
			t1 := time.Now()
			if err := upgrade.Apply(ctx, l, s.c, s.agent, s.apiserver, dir); err != nil {
				traffic.Stop()
				t.Fatalf("%s: %v", s.what, err)
			}
			rolled := time.Since(t1)
			if err := l.WaitConverged(ctx, 3*time.Minute); err != nil {
				traffic.Stop()
				t.Fatalf("%s: %v", s.what, err)
			}
			expectImages(t, ctx, l, map[*lab.Cluster][2]string{c1: s.c1Images, c2: s.c2Images})
			cells, err := l.KubeMatrix(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := lab.MatrixErrors(cells); err != nil {
				t.Errorf("%s: matrix: %v", s.what, err)
			}
			t.Logf("MEASURED %s: %s: rolled out in %.1fs, mesh converged and matrix of %d probes held %.1fs after the apply",
				direction, s.what, rolled.Seconds(), len(cells), time.Since(t1).Seconds())
		}
		rep := traffic.Stop()
		sent, lost := rep.Sent()
		for _, f := range rep.UDP {
			if f.Lost > 0 {
				t.Errorf("%s: flow %s lost %d of %d datagrams (first at %s)", direction, f.Flow, f.Lost, f.Sent, f.LostAt[0].Format("15:04:05.000"))
			}
		}
		for _, b := range rep.Breaks {
			t.Errorf("%s: TCP stream %s broke at %s: %s", direction, b.Flow, b.At.Format("15:04:05.000"), b.Err)
		}
		for k, w := range watches {
			evs, err := w.Events()
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs {
				if !ev.Added {
					t.Errorf("%s: node %s: podmesh route or ipcache entry %s withdrawn at %s", direction, l.Nodes()[k].Name, ev.Prefix, ev.Time.Format("15:04:05.000"))
				}
			}
			w.Close()
		}
		t.Logf("MEASURED %s %s under traffic: %.1fs for %d steps; %d UDP flows at 200/s sent %d datagrams, %d lost; %d TCP streams echoed %d lines in order, %d breaks",
			direction, describe(tag), time.Since(start).Seconds(), len(steps), len(rep.UDP), sent, lost, len(rep.UDP), rep.TCPLines, len(rep.Breaks))
	}

	o, n := [2]string{old.Agent, old.APIServer}, [2]string{cur.Agent, cur.APIServer}
	run("upgrade", []step{
		{"c1 clustermesh-apiserver to current (c2's old agents read it)", c1, old, cur, [2]string{old.Agent, cur.APIServer}, o},
		{"c1 agents to current (they read c2's old clustermesh-apiserver)", c1, cur, cur, n, o},
		{"c2 agents and clustermesh-apiserver to current", c2, cur, cur, n, n},
	})
	run("downgrade", []step{
		{"c2 agents and clustermesh-apiserver back to " + tag + " (mixed mesh again)", c2, old, old, n, o},
		{"c1 agents and clustermesh-apiserver back to " + tag, c1, old, old, o, o},
	})
}

func describe(tag string) string { return "between " + tag + " and current" }

// expectImages checks that every agent pod and the clustermesh-apiserver
// pod of each cluster run the images given (agent, clustermesh-apiserver).
func expectImages(t *testing.T, ctx context.Context, l *lab.Lab, want map[*lab.Cluster][2]string) {
	t.Helper()
	for c, w := range want {
		pods, err := c.Kube.Client.CoreV1().Pods(lab.PodmeshNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen := 0
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			img := p.Spec.Containers[0].Image
			switch p.Labels["app.kubernetes.io/name"] {
			case "podmesh-agent":
				seen++
				if !sameImage(img, w[0]) {
					t.Errorf("cluster %s: agent pod %s runs %s, want %s", c.Name, p.Name, img, w[0])
				}
			case "clustermesh-apiserver":
				seen++
				if !sameImage(img, w[1]) {
					t.Errorf("cluster %s: clustermesh-apiserver pod %s runs %s, want %s", c.Name, p.Name, img, w[1])
				}
			}
		}
		if want := len(c.NodeList()) + 1; seen != want {
			t.Errorf("cluster %s: %d podmesh pods, want %d", c.Name, seen, want)
		}
	}
}

// sameImage compares references, ignoring a docker.io/library default.
func sameImage(a, b string) bool {
	return strings.TrimPrefix(a, "docker.io/") == strings.TrimPrefix(b, "docker.io/")
}

func watchPrefixes(t *testing.T, l *lab.Lab) []*lab.RouteWatch {
	t.Helper()
	var out []*lab.RouteWatch
	for _, n := range l.Nodes() {
		w, err := lab.WatchPrefixes(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Close)
		out = append(out, w)
	}
	return out
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}
