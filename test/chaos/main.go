// Command chaos runs podmesh's chaos soak (package test/chaos/soak) on a
// real-kubelet lab it brings up and removes again:
//
//	go run ./test/chaos -duration 30m -seed 7
//
// It prints one line per fault, then the summary and every failure, and
// exits 1 when the run found something (replay it with the same -seed).
// Only one real lab fits on a machine: run it under the lab lock,
// `flock -o /tmp/podmesh-lab.lock go run ./test/chaos ...` (-o: the lab's
// processes must not inherit the lock). The tools come from $PODMESH_BIN
// (or bin/), the images are built from this checkout.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/test/chaos/soak"
	"github.com/podmesh/podmesh/test/kubetest"
	"github.com/podmesh/podmesh/test/lab"
)

func main() {
	duration := flag.Duration("duration", 30*time.Minute, "how long to inject faults")
	seed := flag.Int64("seed", time.Now().UnixNano(), "seed of the fault sequence")
	clusters := flag.Int("clusters", 3, "clusters")
	nodes := flag.Int("nodes", 2, "real nodes per cluster")
	prefix := flag.String("prefix", "", "lab prefix (default: pmchaos + random)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, *duration, *seed, *clusters, *nodes, *prefix)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos (seed %d): %v\n", *seed, err)
		os.Exit(2)
	}
	os.Exit(code)
}

func run(ctx context.Context, duration time.Duration, seed int64, clusters, nodes int, prefix string) (int, error) {
	bin, err := kubetest.BinDir()
	if err != nil {
		return 0, err
	}
	if prefix == "" {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		prefix = "pmchaos" + hex.EncodeToString(b)
	}
	imgDir, err := os.MkdirTemp("", "podmesh-chaos-images-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(imgDir)
	imgs, err := soak.BuildImages(ctx, imgDir, bin)
	if err != nil {
		return 0, err
	}
	log := logrus.New()
	log.Level = logrus.WarnLevel
	fmt.Printf("chaos: seed %d, %s of faults on %d clusters x %d real nodes (lab %s)\n", seed, duration, clusters, nodes, prefix)
	l, err := lab.Up(ctx, lab.Options{Prefix: prefix, BinDir: bin, Images: imgs, Log: log, Progress: os.Stdout},
		lab.Topology{Clusters: clusters, Nodes: nodes, Pods: 1})
	if err != nil {
		return 0, err
	}
	defer func() {
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "lab down:", err)
		}
	}()
	rep, err := soak.Run(ctx, l, soak.Config{Seed: seed, Duration: duration, Log: os.Stdout, CoreDNSImage: imgs.Ref("coredns")})
	if rep != nil {
		fmt.Println(rep.Summary())
		for _, f := range rep.Failures() {
			fmt.Printf("FAILURE (seed %d): %s\n", seed, f)
		}
	}
	if err != nil {
		return 0, err
	}
	if len(rep.Failures()) > 0 {
		return 1, nil
	}
	fmt.Printf("chaos: seed %d: clean\n", seed)
	return 0, nil
}
