package lab

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ProbeResult is one TCP probe: the source address the receiver saw and how
// long connect plus the first reply took.
type ProbeResult struct {
	Seen netip.AddrPort
	RTT  time.Duration
}

// Probe connects from inside netns to an echo server and returns the peer
// address the server reported.
func Probe(ctx context.Context, netns string, to netip.AddrPort, timeout time.Duration) (ProbeResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	conn, err := DialIn(ctx, netns, "tcp", to.String())
	if err != nil {
		return ProbeResult{}, fmt.Errorf("connect %s from %s: %w", to, netns, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return ProbeResult{}, fmt.Errorf("read from %s: %w", to, err)
	}
	seen, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		return ProbeResult{}, fmt.Errorf("reply of %s: %w", to, err)
	}
	return ProbeResult{Seen: seen, RTT: time.Since(t0)}, nil
}

// Stream is a long-lived TCP connection from one pod to another's echo
// server carrying sequence-numbered lines; every echo is checked, in order.
type Stream struct {
	conn   net.Conn
	cancel context.CancelFunc
	done   chan struct{}

	// mu protects sent, echoed, err and waiters.
	mu      sync.Mutex
	sent    uint64
	echoed  uint64
	err     error
	waiters []streamWaiter
}

type streamWaiter struct {
	n  uint64
	ch chan struct{}
}

// StartStream opens the connection and sends one line every interval until
// Stop. The goroutines it starts are owned by the Stream.
func StartStream(ctx context.Context, fromNS string, to netip.AddrPort, interval time.Duration) (*Stream, error) {
	conn, err := DialIn(ctx, fromNS, "tcp", to.String())
	if err != nil {
		return nil, fmt.Errorf("stream to %s: %w", to, err)
	}
	rd := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := rd.ReadString('\n'); err != nil {
		conn.Close()
		return nil, fmt.Errorf("stream to %s: read greeting: %w", to, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithCancel(ctx)
	s := &Stream{conn: conn, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for seq := uint64(1); ; seq++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			// Counted before the write: the echo may come back before
			// Fprintf returns.
			s.mu.Lock()
			s.sent = seq
			s.mu.Unlock()
			if _, err := fmt.Fprintf(conn, "%d\n", seq); err != nil {
				s.fail(fmt.Errorf("write seq %d: %w", seq, err))
				return
			}
		}
	})
	wg.Go(func() {
		for want := uint64(1); ; want++ {
			line, err := rd.ReadString('\n')
			if err != nil {
				if ctx.Err() == nil {
					s.fail(fmt.Errorf("read echo %d: %w", want, err))
				}
				return
			}
			got, err := strconv.ParseUint(strings.TrimSpace(line), 10, 64)
			if err != nil || got != want {
				s.fail(fmt.Errorf("echo out of order: got %q, want %d", strings.TrimSpace(line), want))
				return
			}
			s.mu.Lock()
			s.echoed = got
			kept := s.waiters[:0]
			for _, w := range s.waiters {
				if got >= w.n {
					close(w.ch)
				} else {
					kept = append(kept, w)
				}
			}
			s.waiters = kept
			s.mu.Unlock()
		}
	})
	go func() {
		wg.Wait()
		close(s.done)
	}()
	return s, nil
}

func (s *Stream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
	s.cancel()
	s.conn.Close()
}

// Counts returns lines sent and echoed so far, and the first error.
func (s *Stream) Counts() (sent, echoed uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent, s.echoed, s.err
}

// WaitEchoed waits until at least n lines have come back.
func (s *Stream) WaitEchoed(ctx context.Context, n uint64, timeout time.Duration) error {
	s.mu.Lock()
	if s.echoed >= n {
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, streamWaiter{n: n, ch: ch})
	s.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-s.done:
		_, echoed, err := s.Counts()
		return fmt.Errorf("stream ended at echo %d (want %d): %v", echoed, n, err)
	case <-t.C:
		_, echoed, err := s.Counts()
		return fmt.Errorf("stream stalled: %d echoes after %s, want %d (err %v)", echoed, timeout, n, err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stop ends the stream and returns its first error.
func (s *Stream) Stop() error {
	s.cancel()
	s.conn.Close()
	<-s.done
	_, _, err := s.Counts()
	return err
}

// UDPReceiver counts sequence-numbered datagrams inside a pod namespace.
type UDPReceiver struct {
	pc   net.PacketConn
	done chan struct{}

	// mu protects seen.
	mu   sync.Mutex
	seen []bool // seen[seq-1]; a long soak sends millions, so not a map
}

// udpPayload is the size of a stream datagram: an 8-byte sequence number,
// padded to a realistic small packet.
const udpPayload = 64

// maxUDPSeq bounds the sequence numbers a receiver records (a datagram with
// a larger one, which no sender here reaches, is ignored).
const maxUDPSeq = 1 << 28

// StartUDPReceiver listens on port inside netns. Its goroutine is owned by
// the receiver and ends on Close.
func StartUDPReceiver(netns string, port int) (*UDPReceiver, error) {
	pc, err := ListenPacketIn(netns, "udp4", net.JoinHostPort("", itoa(port)))
	if err != nil {
		return nil, err
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(4 << 20)
	}
	r := &UDPReceiver{pc: pc, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 8 {
				continue
			}
			r.record(binary.BigEndian.Uint64(buf[:8]))
		}
	}()
	return r, nil
}

func (r *UDPReceiver) record(seq uint64) {
	if seq < 1 || seq > maxUDPSeq {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := int(seq); n > len(r.seen) {
		r.seen = append(r.seen, make([]bool, n-len(r.seen))...)
	}
	r.seen[seq-1] = true
}

// Received returns how many distinct sequence numbers of 1..upTo arrived
// and which are missing (at most 20 listed).
func (r *UDPReceiver) Received(upTo uint64) (count int, missing []uint64) {
	all := r.Missing(upTo)
	return int(upTo) - len(all), all[:min(len(all), 20)]
}

// Missing returns every sequence number of 1..upTo that has not arrived.
func (r *UDPReceiver) Missing(upTo uint64) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var missing []uint64
	for s := uint64(1); s <= upTo; s++ {
		if s > uint64(len(r.seen)) || !r.seen[s-1] {
			missing = append(missing, s)
		}
	}
	return missing
}

// Close stops the receiver.
func (r *UDPReceiver) Close() error {
	err := r.pc.Close()
	<-r.done
	return err
}

// UDPSender sends sequence-numbered datagrams from a pod at a fixed rate.
type UDPSender struct {
	cancel context.CancelFunc
	done   chan struct{}

	// mu protects sent and err.
	mu   sync.Mutex
	sent uint64
	err  error
}

// StartUDPSender sends one datagram every interval from netns to dst until
// Stop. Its goroutine is owned by the sender.
func StartUDPSender(ctx context.Context, netns string, dst netip.AddrPort, interval time.Duration) (*UDPSender, error) {
	conn, err := DialIn(ctx, netns, "udp4", dst.String())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &UDPSender{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer conn.Close()
		t := time.NewTicker(interval)
		defer t.Stop()
		buf := make([]byte, udpPayload)
		for seq := uint64(1); ; seq++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			binary.BigEndian.PutUint64(buf, seq)
			_, err := conn.Write(buf)
			s.mu.Lock()
			// A send error (e.g. ECONNREFUSED from an ICMP error of an
			// earlier datagram) is recorded, the datagram counted as sent,
			// and sending goes on: the receiver decides what arrived.
			if err != nil && s.err == nil && !errors.Is(err, context.Canceled) {
				s.err = fmt.Errorf("send seq %d: %w", seq, err)
			}
			s.sent = seq
			s.mu.Unlock()
		}
	}()
	return s, nil
}

// Stop stops sending and returns how many datagrams were sent.
func (s *UDPSender) Stop() (uint64, error) {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent, s.err
}

// Sent returns how many datagrams were sent so far.
func (s *UDPSender) Sent() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent
}
