package soak

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/podmesh/podmesh/test/lab"
)

// flowPortBase is the first UDP port of the flows' receivers; flow k of a
// receiving pod listens on flowPortBase+k.
const flowPortBase = 9100

// Endpoint is one pod taking part in the traffic, with the node it runs on
// (found by pod CIDR) so faults can say which flows they cut.
type Endpoint struct {
	lab.PodRef
	Node string
}

// Flow names one direction of traffic between two pods of different
// clusters.
type Flow struct {
	From, To Endpoint
}

func (f Flow) String() string { return f.From.String() + "->" + f.To.String() }

// udpFlow is a sequence-numbered UDP stream whose sender remembers when it
// sent every datagram, so a lost datagram can be matched with the fault
// that was in progress.
type udpFlow struct {
	Flow
	rx     *lab.UDPReceiver
	conn   net.Conn
	txDone chan struct{}

	// mu protects sentAt and sendErrs.
	mu       sync.Mutex
	sentAt   []time.Time // sentAt[seq-1]
	sendErrs int
}

// tcpFlow is a TCP echo stream (lab.StartStream) that is reopened after it
// breaks; every break is recorded with its time.
type tcpFlow struct {
	Flow
	// mu protects stream, breaks, lines and reopenFails.
	mu          sync.Mutex
	stream      *lab.Stream
	breaks      []Break
	lines       uint64 // lines echoed by streams already closed
	reopenFails int
}

// Break is one TCP stream that failed.
type Break struct {
	Flow Flow
	At   time.Time
	Err  string
}

// Traffic is the continuous traffic of a soak or an upgrade: one UDP flow
// and one TCP stream from every pod to every pod of the other clusters.
// Its goroutines are owned by it and end on Stop.
type Traffic struct {
	udp    []*udpFlow
	tcp    []*tcpFlow
	cancel context.CancelFunc
	wg     sync.WaitGroup
	start  time.Time
}

// TrafficOptions set the rates.
type TrafficOptions struct {
	// UDPInterval between two datagrams of one flow; default 20ms.
	UDPInterval time.Duration
	// TCPInterval between two lines of one stream; default 100ms.
	TCPInterval time.Duration
}

// Endpoints returns the Ready echo pods of the lab with their nodes.
func Endpoints(ctx context.Context, l *lab.Lab) ([]Endpoint, error) {
	refs, err := l.KubePodRefs(ctx)
	if err != nil {
		return nil, err
	}
	var out []Endpoint
	for _, r := range refs {
		e := Endpoint{PodRef: r}
		for _, n := range l.Nodes() {
			if n.PodCIDR.Contains(r.IP) {
				e.Node = n.Name
			}
		}
		if e.Node == "" {
			return nil, fmt.Errorf("pod %s (%s) is in no node's pod CIDR", r, r.IP)
		}
		out = append(out, e)
	}
	return out, nil
}

// StartTraffic starts the flows between every pair of endpoints of
// different clusters and waits until each of them has carried traffic.
func StartTraffic(ctx context.Context, eps []Endpoint, o TrafficOptions) (_ *Traffic, err error) {
	if o.UDPInterval == 0 {
		o.UDPInterval = 20 * time.Millisecond
	}
	if o.TCPInterval == 0 {
		o.TCPInterval = 100 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(ctx)
	t := &Traffic{cancel: cancel, start: time.Now()}
	defer func() {
		if err != nil {
			t.Stop()
		}
	}()
	ports := map[string]int{} // next receiver port per pod
	for _, from := range eps {
		for _, to := range eps {
			if from.Cluster == to.Cluster {
				continue
			}
			f := Flow{From: from, To: to}
			port := flowPortBase + ports[to.NetNS]
			ports[to.NetNS]++
			u, err := startUDPFlow(ctx, f, port, o.UDPInterval)
			if err != nil {
				return nil, err
			}
			t.udp = append(t.udp, u)
			tf := &tcpFlow{Flow: f}
			if err := tf.open(ctx, o.TCPInterval); err != nil {
				return nil, err
			}
			t.tcp = append(t.tcp, tf)
			t.wg.Go(func() { tf.keep(ctx, o.TCPInterval) })
		}
	}
	// Every flow carries traffic before the first fault.
	deadline := time.Now().Add(30 * time.Second)
	for _, u := range t.udp {
		for u.received() < 10 {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("UDP flow %s: %d datagrams received after 30s", u.Flow, u.received())
			}
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return nil, err
			}
		}
	}
	for _, tf := range t.tcp {
		tf.mu.Lock()
		s := tf.stream
		tf.mu.Unlock()
		if err := s.WaitEchoed(ctx, 5, 30*time.Second); err != nil {
			return nil, fmt.Errorf("TCP stream %s: %w", tf.Flow, err)
		}
	}
	return t, nil
}

func startUDPFlow(ctx context.Context, f Flow, port int, interval time.Duration) (*udpFlow, error) {
	rx, err := lab.StartUDPReceiver(f.To.NetNS, port)
	if err != nil {
		return nil, fmt.Errorf("flow %s: %w", f, err)
	}
	conn, err := lab.DialIn(ctx, f.From.NetNS, "udp4", netip.AddrPortFrom(f.To.IP, uint16(port)).String())
	if err != nil {
		rx.Close()
		return nil, fmt.Errorf("flow %s: %w", f, err)
	}
	u := &udpFlow{Flow: f, rx: rx, conn: conn, txDone: make(chan struct{})}
	go u.send(ctx, interval)
	return u, nil
}

func (u *udpFlow) send(ctx context.Context, interval time.Duration) {
	defer close(u.txDone)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	buf := make([]byte, 64)
	for seq := uint64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		binary.BigEndian.PutUint64(buf, seq)
		u.mu.Lock()
		u.sentAt = append(u.sentAt, time.Now())
		u.mu.Unlock()
		// A send error (ECONNREFUSED from an earlier ICMP error) is
		// counted; the receiver decides what arrived.
		if _, err := u.conn.Write(buf); err != nil {
			u.mu.Lock()
			u.sendErrs++
			u.mu.Unlock()
		}
	}
}

func (u *udpFlow) received() int {
	u.mu.Lock()
	sent := uint64(len(u.sentAt))
	u.mu.Unlock()
	n, _ := u.rx.Received(sent)
	return n
}

func (tf *tcpFlow) open(ctx context.Context, interval time.Duration) error {
	s, err := lab.StartStream(ctx, tf.From.NetNS, netip.AddrPortFrom(tf.To.IP, lab.ServeTCPPort), interval)
	if err != nil {
		return fmt.Errorf("TCP stream %s: %w", tf.Flow, err)
	}
	tf.mu.Lock()
	tf.stream = s
	tf.mu.Unlock()
	return nil
}

// keep watches the stream, records a break and reopens it (every second
// until it opens again).
func (tf *tcpFlow) keep(ctx context.Context, interval time.Duration) {
	for {
		tf.mu.Lock()
		s := tf.stream
		tf.mu.Unlock()
		for {
			if sleepCtx(ctx, 100*time.Millisecond) != nil {
				return
			}
			if _, _, err := s.Counts(); err != nil {
				break
			}
		}
		_, echoed, err := s.Counts()
		_ = s.Stop()
		tf.mu.Lock()
		tf.breaks = append(tf.breaks, Break{Flow: tf.Flow, At: time.Now(), Err: err.Error()})
		tf.lines += echoed
		tf.mu.Unlock()
		for {
			if sleepCtx(ctx, time.Second) != nil {
				return
			}
			if err := tf.open(ctx, interval); err == nil {
				break
			}
			tf.mu.Lock()
			tf.reopenFails++
			tf.mu.Unlock()
		}
	}
}

// FlowReport is what one UDP flow carried.
type FlowReport struct {
	Flow       Flow
	Sent, Lost int
	// LostAt are the send times of the lost datagrams.
	LostAt   []time.Time
	SendErrs int
}

// TrafficReport is the traffic's result.
type TrafficReport struct {
	Duration time.Duration
	UDP      []FlowReport
	// TCPLines is how many lines the TCP streams echoed in order.
	TCPLines uint64
	Breaks   []Break
}

// Sent and Lost sum the UDP flows.
func (r TrafficReport) Sent() (sent, lost int) {
	for _, f := range r.UDP {
		sent += f.Sent
		lost += f.Lost
	}
	return sent, lost
}

// Stop stops sending, gives datagrams in flight a second to arrive, stops
// everything and reports.
func (t *Traffic) Stop() TrafficReport {
	t.cancel()
	for _, u := range t.udp {
		<-u.txDone
	}
	time.Sleep(time.Second) // datagrams in flight (a grace period, not synchronisation)
	t.wg.Wait()
	rep := TrafficReport{Duration: time.Since(t.start)}
	for _, u := range t.udp {
		u.conn.Close()
		u.rx.Close()
		u.mu.Lock()
		fr := FlowReport{Flow: u.Flow, Sent: len(u.sentAt), SendErrs: u.sendErrs}
		for _, seq := range u.rx.Missing(uint64(len(u.sentAt))) {
			fr.Lost++
			fr.LostAt = append(fr.LostAt, u.sentAt[seq-1])
		}
		u.mu.Unlock()
		rep.UDP = append(rep.UDP, fr)
	}
	for _, tf := range t.tcp {
		tf.mu.Lock()
		if tf.stream != nil {
			_, echoed, err := tf.stream.Counts()
			if err != nil {
				tf.breaks = append(tf.breaks, Break{Flow: tf.Flow, At: time.Now(), Err: err.Error()})
			}
			if serr := tf.stream.Stop(); serr != nil && err == nil && !errors.Is(serr, net.ErrClosed) {
				tf.breaks = append(tf.breaks, Break{Flow: tf.Flow, At: time.Now(), Err: serr.Error()})
			}
			tf.lines += echoed
		}
		rep.TCPLines += tf.lines
		rep.Breaks = append(rep.Breaks, tf.breaks...)
		tf.mu.Unlock()
	}
	sort.Slice(rep.Breaks, func(a, b int) bool { return rep.Breaks[a].At.Before(rep.Breaks[b].At) })
	return rep
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
