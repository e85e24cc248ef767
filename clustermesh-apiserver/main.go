// Command clustermesh-apiserver publishes one cluster's nodes, pod IPs and
// services to the other clusters of a podmesh mesh through a read-only,
// mutually authenticated etcd endpoint. See package server and
// docs/apiserver.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/clustermesh-apiserver/server"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := server.ParseFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "clustermesh-apiserver: invalid flags:\n%v\n", err)
		return 2
	}
	log := logrus.New()
	level, err := logrus.ParseLevel(cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "clustermesh-apiserver: --log-level: %v\n", err)
		return 2
	}
	log.SetLevel(level)

	s, err := server.New(cfg, nil, log)
	if err != nil {
		log.WithError(err).Error("Cannot start")
		return 1
	}
	reg := prometheus.NewRegistry()
	for _, c := range s.Collectors() {
		if err := reg.Register(c); err != nil {
			log.WithError(err).Error("Cannot register metrics")
			return 1
		}
	}
	// The embedded etcd and etcd's gRPC proxy register their metrics in the
	// default registry; serve both.
	gatherer := prometheus.Gatherers{reg, prometheus.DefaultGatherer}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := s.Run(ctx, gatherer); err != nil {
		log.WithError(err).Error("clustermesh-apiserver failed")
		return 1
	}
	log.Info("clustermesh-apiserver stopped cleanly")
	return 0
}
