package lab_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podmesh/podmesh/test/lab"
)

// watchRoutes starts a watch of every node's podmesh routes (and, in ebpf
// mode, its ipcache; in vxlan mode, its tunnel neighbour and FDB entries),
// closed when the test ends.
func watchRoutes(t *testing.T, nodes []*lab.Node) []*lab.RouteWatch {
	t.Helper()
	var watches []*lab.RouteWatch
	for _, n := range nodes {
		w, err := lab.WatchPrefixes(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Close)
		watches = append(watches, w)
	}
	return watches
}

// udpStream is a sequence-numbered UDP stream from one pod to another,
// 500 datagrams a second, for drills that must lose nothing.
type udpStream struct {
	rx      *lab.UDPReceiver
	tx      *lab.UDPSender
	stopped bool
}

// startUDPStream starts the stream from the namespace fromNS to to:port
// (received inside toNS) and waits until it flows.
func startUDPStream(t *testing.T, ctx context.Context, fromNS, toNS string, to netip.Addr) *udpStream {
	t.Helper()
	const port = 9000
	rx, err := lab.StartUDPReceiver(toNS, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rx.Close() })
	tx, err := lab.StartUDPSender(ctx, fromNS, netip.AddrPortFrom(to, port), 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	s := &udpStream{rx: rx, tx: tx}
	t.Cleanup(func() {
		if !s.stopped {
			_, _ = tx.Stop()
		}
	})
	eventually(t, 10*time.Second, "UDP stream flowing", func() error {
		if n, _ := rx.Received(tx.Sent()); n < 100 {
			return fmt.Errorf("%d datagrams received", n)
		}
		return nil
	})
	return s
}

// stopAndCheckNoneLost stops the sender and fails the test unless every
// datagram sent arrives; it returns how many were sent.
func (s *udpStream) stopAndCheckNoneLost(t *testing.T) uint64 {
	t.Helper()
	sent, sendErr := s.tx.Stop()
	s.stopped = true
	eventually(t, 10*time.Second, "every datagram received", func() error {
		if n, missing := s.rx.Received(sent); n != int(sent) {
			return fmt.Errorf("received %d of %d, missing %v", n, sent, missing)
		}
		return nil
	})
	if sendErr != nil {
		t.Errorf("sender saw an error: %v", sendErr)
	}
	return sent
}

// checkNoRouteRemoved fails the test for every podmesh route (ipcache,
// tunnel neighbour or FDB entry) the watches saw removed (of those prefixes
// for which counts says true; all when nil).
func checkNoRouteRemoved(t *testing.T, nodes []*lab.Node, watches []*lab.RouteWatch, counts func(netip.Prefix) bool, during string) {
	t.Helper()
	for k, w := range watches {
		evs, err := w.Events()
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if !ev.Added && (counts == nil || counts(ev.Prefix)) {
				t.Errorf("node %s: podmesh %s %s removed %s", nodes[k].Name, ev.Kind, ev.Prefix, during)
			}
		}
	}
}

// finishStream checks that the TCP stream still flows after a drill (25
// more lines echoed), stops it and returns its counts.
func finishStream(t *testing.T, ctx context.Context, stream *lab.Stream) (sent, echoed uint64) {
	t.Helper()
	_, echoed, _ = stream.Counts()
	if err := stream.WaitEchoed(ctx, echoed+25, 10*time.Second); err != nil {
		t.Fatalf("stream after the drill: %v", err)
	}
	sent, echoed, _ = stream.Counts()
	if err := stream.Stop(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	return sent, echoed
}

func matrixOK(t *testing.T, ctx context.Context, pods []lab.PodRef) {
	t.Helper()
	cells := lab.Matrix(ctx, pods)
	var b strings.Builder
	lab.WriteMatrix(&b, cells)
	if err := lab.MatrixErrors(cells); err != nil {
		t.Fatalf("connectivity matrix:\n%s\n%v", b.String(), err)
	}
	t.Logf("connectivity matrix: %d probes ok", len(cells))
}

// converged waits for the whole mesh to be as the lab expects it.
func converged(t *testing.T, ctx context.Context, l *lab.Lab, timeout time.Duration) {
	t.Helper()
	if err := l.WaitConverged(ctx, timeout); err != nil {
		t.Fatal(err)
	}
}

type latencies []time.Duration

func (ls latencies) String() string {
	if len(ls) == 0 {
		return "none"
	}
	s := slices.Clone(ls)
	slices.Sort(s)
	return fmt.Sprintf("min %s median %s max %s (n=%d)", s[0].Round(time.Millisecond), s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), len(s))
}

// checkNothingForwarded fails the test for whatever node n still programs
// for remote pods in its mode: podmesh routes; in ebpf mode ipcache
// entries; in vxlan mode the tunnel device's neighbour and FDB entries.
func checkNothingForwarded(t *testing.T, n *lab.Node) {
	t.Helper()
	routes, err := lab.PodmeshRoutes(n.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 0 {
		t.Errorf("node %s keeps %d podmesh routes: %v", n.Name, len(routes), routes)
	}
	switch n.Mode {
	case lab.ModeEBPF:
		cache, err := lab.ReadIPCache(n.BPFRoot)
		if err != nil {
			t.Fatal(err)
		}
		if len(cache) != 0 {
			t.Errorf("node %s keeps %d ipcache entries: %v", n.Name, len(cache), cache)
		}
	case lab.ModeVXLAN:
		peers, err := lab.ReadTunnelPeers(n.NetNS)
		if err != nil {
			t.Fatal(err)
		}
		if len(peers.Neigh)+len(peers.FDB) != 0 {
			t.Errorf("node %s keeps tunnel peers on %s: neighbours %v, fdb %v", n.Name, lab.TunnelDevice, peers.Neigh, peers.FDB)
		}
	}
}
