package lab_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/test/lab"
)

// testPrefixStart starts every test lab's prefix, so a later run can sweep
// the labs of a test binary that was killed (go test -timeout) by their
// recorded, dead owner, without touching a lab someone brought up by hand.
const testPrefixStart = "pmlt"

var (
	binOnce sync.Once
	binDir  string
	// imagesDir holds the images labImages built.
	imagesDir string
	binErr    map[string]error
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		if stale, err := lab.StaleLabs(lab.DefaultStateRoot); err == nil {
			for _, p := range stale {
				if strings.HasPrefix(p, testPrefixStart) {
					fmt.Fprintf(os.Stderr, "sweeping lab %s left by a killed test run\n", p)
					_ = lab.Down(p, lab.DefaultStateRoot, logrus.StandardLogger())
				}
			}
		}
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if imagesDir != "" {
		os.RemoveAll(imagesDir)
	}
	os.Exit(code)
}

// testPrefix is a fresh, unique lab prefix.
func testPrefix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return testPrefixStart + hex.EncodeToString(b)
}

// buildBinaries builds the lab CLI and podmesh-certs from this checkout into
// one directory, once per test binary (the agent and the
// clustermesh-apiserver reach the lab as images: labImages). A binary that
// fails to build is reported by the tests that need it.
func buildBinaries(t *testing.T, need ...string) string {
	t.Helper()
	binOnce.Do(func() {
		binErr = map[string]error{}
		dir, err := os.MkdirTemp("", "podmesh-lab-bin-")
		if err != nil {
			binErr["*"] = err
			return
		}
		binDir = dir
		root, err := moduleRoot()
		if err != nil {
			binErr["*"] = err
			return
		}
		pkgs := map[string]string{
			"podmesh-lab":   "./test/lab/cmd/podmesh-lab",
			"podmesh-certs": "./certs/cmd/podmesh-certs",
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		for name, pkg := range pkgs {
			wg.Go(func() {
				cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
				cmd.Dir = root
				out, err := cmd.CombinedOutput()
				if err != nil {
					mu.Lock()
					binErr[name] = fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	})
	if err := binErr["*"]; err != nil {
		t.Fatalf("build binaries: %v", err)
	}
	for _, n := range need {
		if err := binErr[n]; err != nil {
			t.Fatalf("cannot run this test without %s: %v", n, err)
		}
	}
	return binDir
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// testLogger writes the lab's structured log into the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func labOptions(t *testing.T, prefix, bin string) lab.Options {
	log := logrus.New()
	log.Out = testWriter{t}
	log.Level = logrus.WarnLevel
	return lab.Options{Prefix: prefix, BinDir: bin, Log: log, Progress: testWriter{t}}
}

// upLab brings a lab up for one test and tears it down (dumping the logs of
// every process when the test failed) when the test ends.
func upLab(t *testing.T, ctx context.Context, o lab.Options, topo lab.Topology) *lab.Lab {
	t.Helper()
	l, err := lab.Up(ctx, o, topo)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			// The kubelets' logs (pods that would not start); the agents'
			// own logs are in the pods, read with kubectl logs. Everything
			// stays in the state dir until the lab is closed just below.
			for _, f := range l.LogFiles() {
				if strings.HasPrefix(filepath.Base(f), "kubelet-") {
					t.Logf("--- last lines of %s:\n%s", f, lab.TailLog(f, 15))
				}
			}
			logAgentPods(t, l)
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if lo, _ := lab.Discover(o.Prefix, ""); !lo.Empty() {
			t.Errorf("lab %s left %s behind", o.Prefix, lo)
		}
	})
	return l
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// logAgentPods logs the last lines of every podmesh pod's log (kubectl
// logs), for a failed test.
func logAgentPods(t *testing.T, l *lab.Lab) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range l.Clusters() {
		out, err := l.Kubectl(ctx, c, "-n", lab.PodmeshNamespace, "logs", "--all-containers", "--prefix", "--tail=15",
			"-l", "app.kubernetes.io/name in (podmesh-agent,clustermesh-apiserver)", "--max-log-requests=20")
		if err != nil {
			t.Logf("--- cluster %s: kubectl logs: %v", c.Name, err)
		}
		t.Logf("--- cluster %s: last lines of the podmesh pods' logs:\n%s", c.Name, out)
	}
}
