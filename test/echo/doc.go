// Package echo is the lab's application server: the program the echo image
// runs in every test pod (test/echo/cmd/echo), and the library the lab links
// when it needs the same server in-process.
//
// The protocol is deliberately tiny, so a probe can tell which source address
// survived the path (after NAT, a tunnel, or a Service): on TCP every
// connection first receives one line, the peer address the server saw
// ("10.1.2.3:40000\n"), and then everything the client sends is echoed back;
// on UDP every datagram is answered with one datagram holding the peer
// address and a newline. Ports are the caller's; the image defaults to
// 7777/tcp and 7778/udp, the ports the lab probes.
package echo
