package soak_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/test/chaos/soak"
	"github.com/podmesh/podmesh/test/kubetest"
	"github.com/podmesh/podmesh/test/lab"
)

// shortSeed is the CI soak's fixed seed; PODMESH_CHAOS_SEED overrides it
// to replay another run.
const shortSeed = 1

// TestChaosSoakShort is the CI version of the chaos soak: 2 real clusters
// x 2 nodes, one echo pod per node, every kind of fault once in a seeded
// random order (about 90 seconds) under traffic, then the end checks. Any
// failure names the seed.
func TestChaosSoakShort(t *testing.T) {
	testutils.RequireRoot(t)
	seed := int64(shortSeed)
	if s := os.Getenv("PODMESH_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("PODMESH_CHAOS_SEED: %v", err)
		}
		seed = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bin, err := kubetest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := soak.BuildImages(ctx, t.TempDir(), bin)
	if err != nil {
		t.Fatal(err)
	}
	l := soak.UpTestLab(t, ctx, imgs, "", lab.Topology{Clusters: 2, Nodes: 2, Pods: 1})
	rep, err := soak.Run(ctx, l, soak.Config{Seed: seed, Rounds: 1, Log: soak.TestWriter{TB: t}, CoreDNSImage: imgs.Ref("coredns")})
	if err != nil {
		t.Fatalf("seed %d: soak could not run: %v", seed, err)
	}
	t.Logf("MEASURED chaos soak (short): %s", rep.Summary())
	for _, f := range rep.Failures() {
		t.Errorf("seed %d: %s", seed, f)
	}
}
