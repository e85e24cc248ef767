// Command bench-datapath measures podmesh's datapath on a simulated topology
// of network namespaces (see pkg/datapath/datapathtest), per routing mode:
//
//   - programming: time from a Desired change to the kernel realising it, for
//     N prefixes from empty, for a burst of changes on top of N, and the cost
//     of a no-op re-check pass at N;
//   - traffic: pod → remote pod TCP throughput and request/response latency,
//     next to a same-node pod pair (plain veth routing, no encapsulation), all
//     measured in the same run on the same topology.
//
// It needs root and creates and removes its own namespaces; nothing in the
// caller's namespace is touched. See README.md for the command.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

func main() {
	var (
		modesFlag    = flag.String("modes", "native,vxlan,ebpf", "routing modes to measure")
		prefixesFlag = flag.String("prefixes", "10000,100000", "desired-set sizes to program from empty")
		changes      = flag.Int("changes", 1000, "changes in the change burst (half deletes, half adds)")
		endpoints    = flag.Int("endpoints", 100, "distinct tunnel endpoints the prefixes spread over")
		duration     = flag.Duration("duration", 5*time.Second, "TCP stream duration per measurement")
		rr           = flag.Int("rr", 20000, "request/response round trips per measurement")
		skipProgram  = flag.Bool("skip-program", false, "skip the programming measurements")
		skipTraffic  = flag.Bool("skip-traffic", false, "skip the traffic measurements")
		cpuProfile   = flag.String("cpuprofile", "", "write a CPU profile of the harness (reconcilers included) to this file")
	)
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-datapath needs root (network namespaces, links, routes, BPF)")
		os.Exit(2)
	}
	modes := strings.Split(*modesFlag, ",")
	var sizes []int
	for _, s := range strings.Split(*prefixesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			fmt.Fprintf(os.Stderr, "bad -prefixes: %v\n", err)
			os.Exit(2)
		}
		sizes = append(sizes, n)
	}

	h := &harness{}
	defer h.runCleanups()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		h.runCleanups()
		os.Exit(130)
	}()

	fmt.Printf("# bench-datapath %s, GOMAXPROCS-visible CPUs: see `nproc`\n", time.Now().UTC().Format(time.RFC3339))
	if !*skipProgram {
		fmt.Println("\n## Programming (Desired change → kernel realised, as reported by Status.AppliedVersion)")
		fmt.Println("(wall time, and in brackets the CPU time user+sys the process spent, kernel work for its syscalls included)")
		fmt.Printf("%-7s %9s %22s %26s %22s\n", "mode", "prefixes", "from empty", "changes", "no-op full pass")
		for _, mode := range modes {
			for _, n := range sizes {
				func() {
					sub := &harness{}
					defer sub.runCleanups()
					res, err := measureProgramming(sub, mode, n, *changes, *endpoints)
					if err != nil {
						fmt.Printf("%-7s %9d error: %v\n", mode, n, err)
						return
					}
					fmt.Printf("%-7s %9d %22s %26s %22s\n", mode, n,
						fmt.Sprintf("%s [%s]", res.fromEmpty.Round(time.Millisecond), res.fromEmptyCPU.Round(time.Millisecond)),
						fmt.Sprintf("%d in %s [%s]", *changes, res.changes.Round(time.Millisecond), res.changesCPU.Round(time.Millisecond)),
						fmt.Sprintf("%s [%s]", res.noop.Round(time.Millisecond), res.noopCPU.Round(time.Millisecond)))
				}()
			}
		}
	}
	if !*skipTraffic {
		fmt.Println("\n## Traffic (one TCP connection; request/response = 1-byte ping-pong, sequential)")
		fmt.Printf("%-28s %12s %10s %10s %10s\n", "path", "throughput", "rr mean", "rr p50", "rr p99")
		if err := measureTraffic(h, modes, *duration, *rr); err != nil {
			fmt.Fprintf(os.Stderr, "traffic: %v\n", err)
			h.runCleanups()
			os.Exit(1)
		}
	}
}

// harness implements datapathtest.T outside `go test`.
type harness struct {
	mu       sync.Mutex
	cleanups []func()
}

func (h *harness) Helper() {}
func (h *harness) Cleanup(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cleanups = append(h.cleanups, f)
}
func (h *harness) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fatal: "+format+"\n", args...)
	h.runCleanups()
	os.Exit(1)
}
func (h *harness) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (h *harness) runCleanups() {
	h.mu.Lock()
	cs := h.cleanups
	h.cleanups = nil
	h.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

func quietLog() logrus.FieldLogger {
	l := logrus.New()
	l.Out = io.Discard
	if os.Getenv("PODMESH_BENCH_LOG") != "" {
		l.Out = os.Stderr
		l.Level = logrus.DebugLevel
	}
	return l
}

type runningRec struct {
	r      *datapath.Reconciler
	cancel context.CancelFunc
	done   chan error
}

func startReconciler(h *harness, cfg datapath.Config) (*runningRec, error) {
	r, err := datapath.New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := &runningRec{r: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	h.Cleanup(rr.stop)
	return rr, nil
}

func (rr *runningRec) stop() {
	if rr.cancel == nil {
		return
	}
	rr.cancel()
	<-rr.done
	rr.cancel = nil
}

// waitApplied polls until the reconciler realised version v.
func waitApplied(rr *runningRec, v uint64, within time.Duration) (time.Time, error) {
	deadline := time.Now().Add(within)
	for {
		s := rr.r.Status()
		if s.AppliedVersion >= v {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("not converged within %s: %s", within, s.LastError)
		}
		t := time.NewTimer(200 * time.Microsecond)
		<-t.C
	}
}

type programResult struct {
	fromEmpty, changes, noop          time.Duration
	fromEmptyCPU, changesCPU, noopCPU time.Duration // user+sys CPU of this process
}

// cpuTime is the user+sys CPU time this process has used (kernel work done
// for its netlink and bpf syscalls included).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bigPrefix is the i-th /32 of 100.64.0.0/10.
// bigCIDR is the pod CIDR the remote cluster of the programming measurement
// declares; every bigPrefix lies in it.
var bigCIDR = netip.MustParsePrefix("100.64.0.0/10")

func bigPrefix(i int) netip.Prefix {
	base := netip.MustParseAddr("100.64.0.0").As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 32)
}

func measureProgramming(h *harness, mode string, n, changes, endpoints int) (programResult, error) {
	var res programResult
	root := datapathtest.BPFRoot(h) // every mode: never the host's default
	lab := datapathtest.NewLab(h, datapathtest.LabOptions{})
	node := lab.AddNode("bench", "a", 1, "10.1.0.0/24")
	eps := make([]netip.Addr, endpoints)
	for i := range eps {
		eps[i] = datapathtest.UnderlayPrefix.Addr().Next()
		for range 10 + i {
			eps[i] = eps[i].Next()
		}
	}
	entry := func(i int) datapath.Entry {
		return datapath.Entry{Prefix: bigPrefix(i), TunnelEndpoint: eps[i%len(eps)], ClusterID: 2, Cluster: "b"}
	}
	d := datapath.NewDesired()
	d.AllowPrune()
	rr, err := startReconciler(h, datapath.Config{Mode: mode, LocalIP: node.IP, NetNS: node.NS.Path, BPFRoot: root,
		LocalClusterID: 1, Desired: d, Log: quietLog()}) // default 10 s re-check
	if err != nil {
		return res, err
	}
	if _, err := waitApplied(rr, d.Version(), time.Minute); err != nil {
		return res, err
	}

	entries := make([]datapath.Entry, n)
	for i := range entries {
		entries[i] = entry(i)
	}
	start, cpu0 := time.Now(), cpuTime()
	d.SetCluster("b", []netip.Prefix{bigCIDR}, entries)
	end, err := waitApplied(rr, d.Version(), 10*time.Minute)
	if err != nil {
		return res, err
	}
	res.fromEmpty, res.fromEmptyCPU = end.Sub(start), cpuTime()-cpu0
	if got := rr.r.Status().Programmed["b"]; got != n {
		return res, fmt.Errorf("programmed %d of %d", got, n)
	}

	// A no-op full pass: wait for the next periodic re-check (a full pass
	// that re-reads the kernel) and read its duration. The change burst runs
	// right after it, so no periodic pass competes with it. The garbage the
	// programming phase left is collected first, so the CPU figure is the
	// pass's (and its own garbage's), not the phase before.
	runtime.GC()
	applied, cpu0 := time.Now(), cpuTime()
	deadline := time.Now().Add(time.Minute)
	for {
		s := rr.r.Status()
		if s.LastPass == "full" && s.LastReconcile.After(applied) {
			break
		}
		if time.Now().After(deadline) {
			return res, errors.New("no periodic full pass within a minute")
		}
		t := time.NewTimer(10 * time.Millisecond)
		<-t.C
	}
	res.noop = rr.r.Status().LastDuration
	res.noopCPU = cpuTime() - cpu0 // the wait loop itself costs next to nothing
	// A burst of single changes: delete the first half, add as many new.
	start, cpu0 = time.Now(), cpuTime()
	for i := range changes / 2 {
		d.Delete("b", bigPrefix(i))
		d.Upsert(entry(n + i))
	}
	end, err = waitApplied(rr, d.Version(), 10*time.Minute)
	if err != nil {
		return res, err
	}
	res.changes, res.changesCPU = end.Sub(start), cpuTime()-cpu0

	rr.stop()
	return res, nil
}

// measureTraffic builds a1 (pods pa, pa2) and b1 (pod pb) on one underlay and
// measures pa→pa2 (same node, veth only) once, then pa→pb per mode, switching
// modes on the same topology.
func measureTraffic(h *harness, modes []string, duration time.Duration, rrCount int) error {
	root := datapathtest.BPFRoot(h) // every mode: never the host's default
	lab := datapathtest.NewLab(h, datapathtest.LabOptions{})
	a1 := lab.AddNode("a1", "a", 1, "10.1.0.0/24")
	b1 := lab.AddNode("b1", "b", 2, "10.2.0.0/24")
	pa := a1.AddPod("10.1.0.10")
	pa2 := a1.AddPod("10.1.0.11")
	pb := b1.AddPod("10.2.0.10")
	for _, n := range []*datapathtest.Node{a1, b1} {
		if err := n.NS.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
	}
	for _, p := range []*datapathtest.Pod{pa2, pb} {
		if err := startSinkAndEcho(h, p); err != nil {
			return err
		}
	}
	if err := report("same node, veth only", pa, pa2, duration, rrCount); err != nil {
		return err
	}
	for _, mode := range modes {
		var rrs []*runningRec
		for _, pair := range [][2]*datapathtest.Node{{a1, b1}, {b1, a1}} {
			n, o := pair[0], pair[1]
			d := datapath.NewDesired()
			d.SetCluster(o.Cluster, []netip.Prefix{o.PodCIDR}, []datapath.Entry{{Prefix: o.PodCIDR, TunnelEndpoint: o.IP, ClusterID: o.ClusterID, Cluster: o.Cluster}})
			d.AllowPrune()
			bpfRoot := root + "/" + n.Name
			rr, err := startReconciler(h, datapath.Config{Mode: mode, LocalIP: n.IP, NetNS: n.NS.Path, BPFRoot: bpfRoot,
				LocalClusterID: n.ClusterID, Desired: d, Log: quietLog()})
			if err != nil {
				return fmt.Errorf("%s: %w", mode, err)
			}
			if _, err := waitApplied(rr, d.Version(), time.Minute); err != nil {
				return fmt.Errorf("%s: %w", mode, err)
			}
			rrs = append(rrs, rr)
		}
		label := "cross node, " + mode
		if mode == datapath.ModeNative {
			label += " (no encap)"
		}
		if err := report(label, pa, pb, duration, rrCount); err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		for _, rr := range rrs {
			rr.stop()
		}
	}
	return nil
}

const (
	sinkPort = 5201
	echoPort = 5202
)

// startSinkAndEcho runs, in pod p, a TCP sink (reads and discards, then
// reports the byte count when the sender half-closes) and a TCP echo.
func startSinkAndEcho(h *harness, p *datapathtest.Pod) error {
	sink, err := p.Listen("tcp", sinkPort)
	if err != nil {
		return err
	}
	echo, err := p.Listen("tcp", echoPort)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	h.Cleanup(func() { sink.Close(); echo.Close(); wg.Wait() })
	serve := func(l net.Listener, handle func(net.Conn)) {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); handle(c) }()
		}
	}
	wg.Add(2)
	go serve(sink, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "%d\n", n)
	})
	go serve(echo, func(c net.Conn) { io.Copy(c, c) })
	return nil
}

func report(label string, from, to *datapathtest.Pod, duration time.Duration, rrCount int) error {
	bps, err := throughput(from, to, duration)
	if err != nil {
		return fmt.Errorf("%s throughput: %w", label, err)
	}
	mean, p50, p99, err := requestResponse(from, to, rrCount)
	if err != nil {
		return fmt.Errorf("%s request/response: %w", label, err)
	}
	fmt.Printf("%-28s %7.2f Gb/s %10s %10s %10s\n", label, bps*8/1e9, mean.Round(100*time.Nanosecond), p50.Round(100*time.Nanosecond), p99.Round(100*time.Nanosecond))
	return nil
}

// throughput sends for duration and returns the bytes per second the
// receiver confirms.
func throughput(from, to *datapathtest.Pod, duration time.Duration) (float64, error) {
	c, err := from.Dial("tcp", netip.AddrPortFrom(to.IP, sinkPort), 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 128<<10)
	start := time.Now()
	end := start.Add(duration)
	for time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := io.ReadAll(c)
	if err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	n, err := strconv.ParseInt(strings.TrimSpace(string(line)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("sink reply %q: %w", line, err)
	}
	return float64(n) / elapsed.Seconds(), nil
}

// requestResponse does count sequential 1-byte round trips and returns the
// mean, median and 99th percentile.
func requestResponse(from, to *datapathtest.Pod, count int) (mean, p50, p99 time.Duration, err error) {
	c, err := from.Dial("tcp", netip.AddrPortFrom(to.IP, echoPort), 5*time.Second)
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	b := []byte{1}
	// Warm up (ARP, PMTU, TCP state).
	for range 100 {
		if _, err := c.Write(b); err != nil {
			return 0, 0, 0, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, 0, 0, err
		}
	}
	lat := make([]time.Duration, count)
	var total time.Duration
	for i := range lat {
		t0 := time.Now()
		if _, err := c.Write(b); err != nil {
			return 0, 0, 0, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, 0, 0, err
		}
		lat[i] = time.Since(t0)
		total += lat[i]
	}
	if count == 0 {
		return 0, 0, 0, errors.New("no round trips")
	}
	slices.Sort(lat)
	return total / time.Duration(count), lat[count/2], lat[count*99/100], nil
}
