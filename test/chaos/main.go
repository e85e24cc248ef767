// Command chaos runs podmesh's chaos soak (package test/chaos/soak) on a
// real-kubelet lab it brings up and removes again:
//
//	go run ./test/chaos -duration 30m -seed 7 -logs /tmp/chaos-logs
//
// -logs keeps the lab's logs (control planes, kubelets, containerd, the
// pods': clustermesh-apiserver, agents, CoreDNS) in that directory when the
// lab goes, so a finding can be explained afterwards; -kinds limits the
// faults to a comma-separated list (replaying one kind of finding).
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
	"path/filepath"
	"slices"
	"strings"
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
	logs := flag.String("logs", "", "keep the lab's logs in this directory")
	kinds := flag.String("kinds", "", "comma-separated fault kinds (default: all of "+strings.Join(soak.Kinds, ",")+")")
	flag.Parse()
	var cfg soak.Config
	if *kinds != "" {
		cfg.Kinds = strings.Split(*kinds, ",")
		for _, k := range cfg.Kinds {
			if !slices.Contains(soak.Kinds, k) {
				fmt.Fprintf(os.Stderr, "chaos: unknown fault kind %q (known: %s)\n", k, strings.Join(soak.Kinds, ","))
				os.Exit(2)
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.Seed, cfg.Duration = *seed, *duration
	code, err := run(ctx, cfg, *clusters, *nodes, *prefix, *logs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos (seed %d): %v\n", *seed, err)
		os.Exit(2)
	}
	os.Exit(code)
}

func run(ctx context.Context, cfg soak.Config, clusters, nodes int, prefix, logs string) (int, error) {
	seed := cfg.Seed
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
	fmt.Printf("chaos: seed %d, %s of faults on %d clusters x %d real nodes (lab %s)\n", seed, cfg.Duration, clusters, nodes, prefix)
	l, err := lab.Up(ctx, lab.Options{Prefix: prefix, BinDir: bin, Images: imgs, Log: log, Progress: os.Stdout},
		lab.Topology{Clusters: clusters, Nodes: nodes, Pods: 1})
	if err != nil {
		return 0, err
	}
	defer func() {
		if logs != "" {
			if err := l.SaveLogs(logs); err != nil {
				fmt.Fprintln(os.Stderr, "keep logs:", err)
			} else {
				fmt.Println("chaos: the lab's logs are in", logs)
			}
		}
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "lab down:", err)
		}
	}()
	cfg.Log, cfg.CoreDNSImage = os.Stdout, imgs.Ref("coredns")
	if logs != "" {
		if err := os.MkdirAll(logs, 0o755); err != nil {
			return 0, err
		}
		j, err := os.Create(filepath.Join(logs, "imported-slices.journal"))
		if err != nil {
			return 0, err
		}
		defer j.Close()
		cfg.Journal = j
		// The kubelet removes a deleted pod's logs: copy them while the
		// run goes on (the faults delete pods all the time).
		kctx, stopKeeping := context.WithCancel(ctx)
		kept := make(chan struct{})
		defer func() { stopKeeping(); <-kept }()
		go func() {
			defer close(kept)
			for t := time.NewTicker(2 * time.Second); ; {
				select {
				case <-kctx.Done():
					t.Stop()
					return
				case <-t.C:
					_ = l.SaveLogs(logs)
				}
			}
		}()
	}
	rep, err := soak.Run(ctx, l, cfg)
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
