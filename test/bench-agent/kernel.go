package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/pkg/datapath"
	"github.com/podmesh/podmesh/pkg/datapath/datapathtest"
)

// errNeedsRoot refuses -kernel without root.
var errNeedsRoot = errors.New("-kernel needs root (a network namespace, an eBPF program and maps on bpffs); run without -kernel to measure up to the agent's desired set")

// kernelDatapath is an ebpf-mode datapath (pkg/datapath's Reconciler)
// programming a desired set into a network namespace and a bpffs directory
// of its own (datapathtest: pmt-* namespaces; /sys/fs/bpf/podmesh-test-*, or
// a private bpffs instance on a temporary directory where /sys/fs/bpf is not
// a bpffs), all removed by close, also after a failure half-way and on
// SIGINT/SIGTERM. Convergence is read from the kernel: its pinned ipcache
// map, looked up directly.
type kernelDatapath struct {
	cleanups
	rec     *datapath.Reconciler
	ipcache *ebpf.Map
}

// startKernel builds the namespace, starts the reconciler on desired and
// waits until it realised desired's current version. On SIGINT or SIGTERM
// until close, it removes what it built, runs atExit (the caller's other
// children) and exits.
func startKernel(ctx context.Context, desired *datapath.Desired, atExit func()) (k *kernelDatapath, err error) {
	if os.Geteuid() != 0 {
		return nil, errNeedsRoot
	}
	k = &kernelDatapath{}
	k.onSignal(atExit)
	defer func() {
		if err != nil {
			k.close()
		}
	}()
	var node *datapathtest.Node
	var root string
	if err := k.guard(func() {
		root = datapathtest.BPFRoot(k)
		node = datapathtest.NewLab(k, datapathtest.LabOptions{}).AddNode("agent", "local", 1, "10.0.0.0/24")
	}); err != nil {
		return nil, err
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	if k.rec, err = datapath.New(datapath.Config{Mode: datapath.ModeEBPF, LocalIP: node.IP, NetNS: node.NS.Path, BPFRoot: root,
		LocalClusterID: 1, Desired: desired, Log: log}); err != nil {
		return nil, fmt.Errorf("ebpf datapath: %w", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- k.rec.Run(rctx) }()
	k.Cleanup(func() { cancel(); <-done })

	v := desired.Version()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for k.rec.Status().AppliedVersion < v {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-done:
			done <- err
			return nil, fmt.Errorf("ebpf datapath stopped: %w", err)
		case <-t.C:
		}
	}
	if k.ipcache, err = ebpf.LoadPinnedMap(filepath.Join(root, "ipcache"), nil); err != nil {
		return nil, fmt.Errorf("open the pinned ipcache: %w", err)
	}
	k.Cleanup(func() { k.ipcache.Close() })
	return k, nil
}

// programmed is how many prefixes the datapath reports programmed.
func (k *kernelDatapath) programmed() int {
	n := 0
	for _, v := range k.rec.Status().Programmed {
		n += v
	}
	return n
}

// ipcacheKey and ipcacheValue are the layout of the program's ipcache (an
// LPM trie; bpf/podmesh.c): the key is read here independently of the bpf
// package, and checkLayout proves it against an entry the reconciler wrote.
type ipcacheKey struct {
	Prefixlen uint32 // 32 (family and padding) + the prefix length
	Family    uint8  // 4 or 6
	Pad       [3]uint8
	Addr      [16]uint8
}

type ipcacheValue struct {
	Endpoint       [16]uint8
	EndpointFamily uint8
	Pad            [3]uint8
	ClusterID      uint32
	Flags          uint32
}

// lookup returns the ipcache's longest-prefix match for p (IPv4).
func (k *kernelDatapath) lookup(p netip.Prefix) (netip.Addr, uint32, bool, error) {
	key := ipcacheKey{Prefixlen: uint32(32 + p.Bits()), Family: 4}
	a := p.Addr().As4()
	copy(key.Addr[:], a[:])
	var v ipcacheValue
	if err := k.ipcache.Lookup(&key, &v); errors.Is(err, ebpf.ErrKeyNotExist) {
		return netip.Addr{}, 0, false, nil
	} else if err != nil {
		return netip.Addr{}, 0, false, fmt.Errorf("look up %s in the ipcache: %w", p, err)
	}
	return netip.AddrFrom4([4]byte(v.Endpoint[:4])), v.ClusterID, true, nil
}

// checkLayout proves the lookup against entries the reconciler wrote: want
// must be found with its endpoint and cluster ID, and absent must find
// nothing (no entry covers it, so a lookup of it tells exactly whether its
// own /32 is there).
func (k *kernelDatapath) checkLayout(want datapath.Entry, absent netip.Prefix) error {
	ep, id, ok, err := k.lookup(want.Prefix)
	if err != nil {
		return err
	}
	if !ok || ep != want.TunnelEndpoint || id != want.ClusterID {
		return fmt.Errorf("the ipcache lookup of %s found %v (endpoint %s, cluster %d), want endpoint %s, cluster %d: the harness's key layout is not the program's", want.Prefix, ok, ep, id, want.TunnelEndpoint, want.ClusterID)
	}
	if _, _, ok, err := k.lookup(absent); err != nil || ok {
		return fmt.Errorf("%s is covered by an ipcache entry before it was written (err %v): probes must lie outside every entry", absent, err)
	}
	return nil
}

// waitEntry polls the ipcache until p is present (with endpoint ep) or
// absent, and returns when it first saw it so.
func (k *kernelDatapath) waitEntry(ctx context.Context, p netip.Prefix, ep netip.Addr, present bool, within time.Duration) (time.Time, error) {
	deadline := time.Now().Add(within)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		got, _, ok, err := k.lookup(p)
		if err != nil {
			return time.Time{}, err
		}
		if ok == present && (!present || got == ep) {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s (present %v) not in the kernel after %s: %s", p, present, within, k.rec.Status().LastError)
		}
		t.Reset(100 * time.Microsecond)
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-t.C:
		}
	}
}

// cleanups implements datapathtest.T outside `go test`: Fatalf unwinds to
// guard, and close runs every cleanup once, in reverse (a second caller,
// the signal handler's or the harness's, waits until they ran).
type cleanups struct {
	once sync.Once
	mu   sync.Mutex
	fns  []func()
	stop func() // stops the signal handler
}

type fatal struct{ error }

func (c *cleanups) Helper()                 {}
func (c *cleanups) Logf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
func (c *cleanups) Fatalf(f string, a ...any) {
	panic(fatal{fmt.Errorf(f, a...)})
}

func (c *cleanups) Cleanup(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fns = append(c.fns, f)
}

// guard runs f and returns the error a Fatalf in it raised.
func (c *cleanups) guard(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			ft, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = ft.error
		}
	}()
	f()
	return nil
}

// onSignal runs the cleanups and atExit and exits on SIGINT or SIGTERM, so
// an interrupted run leaves no namespace or pin behind.
func (c *cleanups) onSignal(atExit func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	quit := make(chan struct{})
	go func() {
		select {
		case s := <-sig:
			c.close()
			fmt.Fprintf(os.Stderr, "bench-agent: %s: removed the kernel harness's namespaces and pins\n", s)
			atExit()
			os.Exit(130)
		case <-quit:
		}
	}()
	c.stop = func() { signal.Stop(sig); close(quit) }
}

func (c *cleanups) close() {
	c.once.Do(func() {
		c.mu.Lock()
		fns := c.fns
		c.fns = nil
		stop := c.stop
		c.mu.Unlock()
		for i := len(fns) - 1; i >= 0; i-- {
			fns[i]()
		}
		if stop != nil {
			stop()
		}
	})
}
