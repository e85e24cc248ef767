// Command echo is the echo image's server (package
// github.com/podmesh/podmesh/test/echo): it greets every TCP connection with
// the peer address it saw, then echoes; it answers every UDP datagram with
// the peer address. It stops on SIGTERM or SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/test/echo"
)

func main() {
	tcp := flag.String("tcp", ":7777", "TCP address to listen on")
	udp := flag.String("udp", ":7778", "UDP address to listen on")
	flag.Parse()
	log := logrus.New()
	log.SetOutput(os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := echo.Serve(ctx, *tcp, *udp, log); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}
