package datapathtest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Listen opens a listener inside the pod's namespace.
func (p *Pod) Listen(network string, port int) (net.Listener, error) {
	var l net.Listener
	err := p.NS.Do(func() error {
		var err error
		l, err = net.Listen(network, netip.AddrPortFrom(p.IP, uint16(port)).String())
		return err
	})
	return l, err
}

// listenAny opens a dual-stack listener on every address of the pod.
func (p *Pod) listenAny(port int) (net.Listener, *net.UDPConn, error) {
	var (
		l net.Listener
		u *net.UDPConn
	)
	err := p.NS.Do(func() error {
		var err error
		if l, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		u, err = net.ListenUDP("udp", &net.UDPAddr{Port: port})
		return err
	})
	if err != nil && l != nil {
		l.Close()
	}
	return l, u, err
}

// ListenUDP opens a UDP socket bound to the pod's address and port.
func (p *Pod) ListenUDP(port int) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := p.NS.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.IP, uint16(port))))
		return err
	})
	return c, err
}

// Dial connects from inside the pod's namespace.
func (p *Pod) Dial(network string, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.NS.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, to.String(), timeout)
		return err
	})
	return c, err
}

// IdentServer accepts TCP connections and UDP datagrams in a pod and answers
// each with the source address it saw, so a client can check that its pod IP
// arrives unchanged (no masquerading on the way). TCP connections then echo
// everything else they receive.
type IdentServer struct {
	Port int
	tcp  net.Listener
	udp  *net.UDPConn
	wg   sync.WaitGroup
}

// StartIdentServer starts an IdentServer on port in pod and stops it in t's cleanup.
func StartIdentServer(t T, pod *Pod, port int) *IdentServer {
	t.Helper()
	l, u, err := pod.listenAny(port)
	must(t, err, "listen in %s", pod.Name)
	s := &IdentServer{Port: port, tcp: l, udp: u}
	s.wg.Add(2)
	go s.serveTCP()
	go s.serveUDP()
	t.Cleanup(s.Close)
	return s
}

// Close stops the server and waits for its goroutines.
func (s *IdentServer) Close() {
	s.tcp.Close()
	s.udp.Close()
	s.wg.Wait()
}

func (s *IdentServer) serveTCP() {
	defer s.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			if _, err := fmt.Fprintf(c, "%s\n", ap.Addr().Unmap()); err != nil {
				return
			}
			io.Copy(c, c)
		}()
	}
}

func (s *IdentServer) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := s.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		reply := append([]byte(from.Addr().Unmap().String()+"\n"), buf[:n]...)
		s.udp.WriteToUDPAddrPort(reply, from)
	}
}

// TCPIdent connects from pod to addr:port over TCP and returns the source
// address the server saw.
func TCPIdent(pod *Pod, to netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	c, err := pod.Dial("tcp", to, timeout)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.Addr{}, fmt.Errorf("read ident: %w", err)
	}
	return netip.ParseAddr(strings.TrimSpace(line))
}

// UDPIdent sends one datagram from pod to addr:port and returns the source
// address the server saw.
func UDPIdent(pod *Pod, to netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	c, err := pod.Dial("udp", to, timeout)
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return netip.Addr{}, err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("read ident: %w", err)
	}
	line, rest, ok := strings.Cut(string(buf[:n]), "\n")
	if !ok || rest != "ping" {
		return netip.Addr{}, errors.New("malformed udp reply")
	}
	return netip.ParseAddr(line)
}
