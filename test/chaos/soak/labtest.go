package soak

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/images"
	"github.com/podmesh/podmesh/test/kubetest"
	"github.com/podmesh/podmesh/test/lab"
)

// TestLabPrefixStart starts the prefix of every lab UpTestLab brings up:
// test/lab's test binary sweeps such labs left by a killed test run.
const TestLabPrefixStart = "pmlt"

// UpTestLab brings up a real lab for a test — tools from $PODMESH_BIN (or
// bin/), the given images, podmesh installed from repo's daemonset/ (""
// for this checkout's) — and removes it when the test ends, failing the
// test if anything of it is left behind.
func UpTestLab(tb testing.TB, ctx context.Context, imgs lab.ImageSet, repo string, topo lab.Topology) *lab.Lab {
	tb.Helper()
	bin, err := kubetest.BinDir()
	if err != nil {
		tb.Fatal(err)
	}
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	log := logrus.New()
	log.Out = TestWriter{tb}
	log.Level = logrus.WarnLevel
	o := lab.Options{Prefix: TestLabPrefixStart + hex.EncodeToString(b), BinDir: bin, Images: imgs, RepoDir: repo,
		Log: log, Progress: TestWriter{tb}}
	l, err := lab.Up(ctx, o, topo)
	if err != nil {
		tb.Fatalf("lab up: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			for _, f := range l.LogFiles() {
				if strings.Contains(f, "kubelet-") || strings.Contains(f, "chaos-") {
					tb.Logf("--- last lines of %s:\n%s", f, lab.TailLog(f, 15))
				}
			}
		}
		if err := l.Close(); err != nil {
			tb.Errorf("lab down: %v", err)
		}
		if lo, _ := lab.Discover(o.Prefix, ""); !lo.Empty() {
			tb.Errorf("lab %s left %s behind", o.Prefix, lo)
		}
	})
	return l
}

// TestWriter writes each line into the test log.
type TestWriter struct{ TB testing.TB }

func (w TestWriter) Write(p []byte) (int, error) {
	w.TB.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// BuildImages builds this checkout's images and the lab's, CoreDNS (from
// binDir, the tools) included, into outDir.
func BuildImages(ctx context.Context, outDir, binDir string) (lab.ImageSet, error) {
	imgs, err := images.Build(ctx, images.Options{OutDir: outDir, GoBuild: true, BinDir: binDir})
	if err != nil {
		return nil, fmt.Errorf("build images: %w", err)
	}
	out := make(lab.ImageSet, len(imgs))
	for k, im := range imgs {
		out[k] = lab.ImageArchive{Name: im.Name, Ref: im.Ref, Archive: im.Archive}
	}
	return out, nil
}
