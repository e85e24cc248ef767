package echo

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/sirupsen/logrus"
)

// Serve runs the echo server on tcpAddr and udpAddr until ctx ends, then
// closes its listeners and every open connection and returns nil. It
// returns an error when a listener cannot be opened or accepting fails for
// another reason than ctx ending.
func Serve(ctx context.Context, tcpAddr, udpAddr string, log logrus.FieldLogger) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", tcpAddr)
	if err != nil {
		return fmt.Errorf("listen tcp %s: %w", tcpAddr, err)
	}
	pc, err := lc.ListenPacket(ctx, "udp", udpAddr)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen udp %s: %w", udpAddr, err)
	}
	// Every goroutine below is owned by Serve: wg.Wait returns only when
	// ctx has ended and all of them have stopped.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		<-ctx.Done()
		ln.Close()
		pc.Close()
	})
	wg.Go(func() { answerDatagrams(pc) })
	log.WithFields(logrus.Fields{"tcp": ln.Addr().String(), "udp": pc.LocalAddr().String()}).Info("echo server listening")
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Go(func() { echoConn(ctx, conn) })
	}
}

// echoConn greets conn with the peer address and echoes it until the peer
// closes or ctx ends.
func echoConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := io.WriteString(conn, conn.RemoteAddr().String()+"\n"); err != nil {
		return
	}
	_, _ = io.Copy(conn, conn)
}

// answerDatagrams answers every datagram with the sender's address until pc
// is closed.
func answerDatagrams(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(from.String()+"\n"), from)
	}
}
