package kvstoretest

import (
	"net"
	"sync"
	"testing"
)

// Forwarder relays TCP connections from a loopback port to a target. Cut
// closes the port and every relayed connection, as a stopped proxy would;
// Restore listens again on the same port. Stall stops relaying bytes while
// keeping every connection open, as a path that silently drops packets
// would; Unstall lets them flow again.
type Forwarder struct {
	// Addr is the host:port clients dial; it stays the same across Cut/Restore.
	Addr string

	// mu protects target, ln, conns and flowing.
	mu     sync.Mutex
	target string
	ln     net.Listener
	conns  map[net.Conn]struct{}
	// flowing is closed while bytes are relayed; Stall replaces it with an
	// open channel.
	flowing chan struct{}
	wg      sync.WaitGroup
}

// StartForwarder relays 127.0.0.1:<random port> to target until the test ends.
func StartForwarder(tb testing.TB, target string) *Forwarder {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	f := &Forwarder{Addr: ln.Addr().String(), target: target, conns: make(map[net.Conn]struct{}), flowing: make(chan struct{})}
	close(f.flowing)
	f.serve(ln)
	tb.Cleanup(func() {
		f.Cut()
		f.wg.Wait()
	})
	return f
}

// Cut stops accepting and closes every relayed connection (and ends a stall).
func (f *Forwarder) Cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
	}
	f.unstallLocked()
}

// Stall holds every byte in both directions without closing anything.
func (f *Forwarder) Stall() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.flowing:
		f.flowing = make(chan struct{})
	default: // already stalled
	}
}

// Unstall relays again, starting with the bytes held.
func (f *Forwarder) Unstall() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unstallLocked()
}

func (f *Forwarder) unstallLocked() {
	select {
	case <-f.flowing:
	default:
		close(f.flowing)
	}
}

func (f *Forwarder) gate() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flowing
}

// Retarget relays new connections to target and closes every relayed one,
// as a Service does when its only endpoint moves to a new pod: clients find
// a different server behind the same address.
func (f *Forwarder) Retarget(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.target = target
	for c := range f.conns {
		c.Close()
	}
}

// Restore listens on Addr again.
func (f *Forwarder) Restore(tb testing.TB) {
	tb.Helper()
	ln, err := net.Listen("tcp", f.Addr)
	if err != nil {
		tb.Fatalf("listen again on %s: %v", f.Addr, err)
	}
	f.serve(ln)
}

func (f *Forwarder) serve(ln net.Listener) {
	f.mu.Lock()
	f.ln = ln
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.relay(c)
		}
	}()
}

func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln == nil {
		c.Close()
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
	c.Close()
}

func (f *Forwarder) relay(in net.Conn) {
	if !f.track(in) {
		return
	}
	f.mu.Lock()
	target := f.target
	f.mu.Unlock()
	out, err := net.Dial("tcp", target)
	if err != nil {
		f.untrack(in)
		return
	}
	if !f.track(out) {
		f.untrack(in)
		return
	}
	f.wg.Add(2)
	pipe := func(dst, src net.Conn) {
		defer f.wg.Done()
		f.copy(dst, src) // ends when either side closes
		f.untrack(dst)
		f.untrack(src)
	}
	go pipe(out, in)
	go pipe(in, out)
}

// copy relays src to dst, holding what it read while the forwarder stalls.
func (f *Forwarder) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			<-f.gate()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
