package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/pkg/agentstatus"
	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/datapath"
)

// Report is what /status returns and `podmesh-agent status` prints.
type Report = agentstatus.Report

// meshStatus and datapathStatus are what the server reads.
type meshStatus interface {
	Status() clustermesh.Status
	Synced() <-chan struct{}
}

type datapathStatus interface{ Status() datapath.Status }

// statusServer serves /status, /healthz, /readyz and /metrics.
type statusServer struct {
	node     *localNode
	mesh     meshStatus
	datapath datapathStatus // nil when the datapath does not run
	gatherer prometheus.Gatherer
	log      logrus.FieldLogger
}

func (s *statusServer) report() Report {
	r := Report{Node: s.node.Name, TunnelIP: s.node.TunnelIP.String(), Mesh: s.mesh.Status()}
	if s.datapath != nil {
		st := s.datapath.Status()
		r.Datapath = &agentstatus.Datapath{Mode: st.Mode, Programmed: st.Programmed, Failed: st.Failed, LastError: st.LastError, ReconcileErrors: st.ReconcileErrors, LastReconcile: st.LastReconcile}
	}
	return r
}

func (s *statusServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(s.report()); err != nil {
			s.log.WithError(err).Debug("Writing status failed")
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-s.mesh.Synced():
			fmt.Fprintln(w, "ok")
		default:
			http.Error(w, "initial sync of remote clusters not complete", http.StatusServiceUnavailable)
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
	return mux
}

// serve runs the server on ln until ctx is done.
func (s *statusServer) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("status server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
