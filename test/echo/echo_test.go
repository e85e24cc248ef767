package echo

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
)

// listening is a logrus hook that hands over the addresses Serve reports
// when it listens.
type listening chan logrus.Fields

func (l listening) Levels() []logrus.Level { return logrus.AllLevels }

func (l listening) Fire(e *logrus.Entry) error {
	if e.Message == "echo server listening" {
		l <- e.Data
	}
	return nil
}

// startServe runs Serve on loopback with kernel-chosen ports and returns
// its TCP and UDP addresses and a function that stops it and returns
// Serve's result.
func startServe(t *testing.T) (tcp, udp string, stop func() error) {
	t.Helper()
	log := logrus.New()
	log.SetOutput(testWriter{t})
	up := make(listening, 1)
	log.AddHook(up)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, "127.0.0.1:0", "127.0.0.1:0", log) }()
	select {
	case f := <-up:
		tcp, udp = f["tcp"].(string), f["udp"].(string)
	case err := <-done:
		cancel()
		t.Fatalf("Serve returned before listening: %v", err)
	}
	stopped := false
	stop = func() error {
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() {
		if !stopped {
			_ = stop()
		}
	})
	return tcp, udp, stop
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// dial connects to the server with a deadline for the whole test, so a
// missing answer fails instead of hanging.
func dial(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial(network, addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	return conn
}

func TestTCPGreetsWithThePeerAddressThenEchoes(t *testing.T) {
	tcp, _, _ := startServe(t)
	conn := dial(t, "tcp", tcp)
	rd := bufio.NewReader(conn)

	greeting, err := rd.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, conn.LocalAddr().String()+"\n", greeting, "the first line is the client address the server saw")

	for _, line := range []string{"1\n", "hello, echo\n", "3\n"} {
		_, err := conn.Write([]byte(line))
		require.NoError(t, err)
		got, err := rd.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, line, got)
	}
}

func TestUDPAnswersEachDatagramWithThePeerAddress(t *testing.T) {
	_, udp, _ := startServe(t)
	conn := dial(t, "udp", udp)
	buf := make([]byte, 256)
	for _, payload := range []string{"a", "second datagram"} {
		_, err := conn.Write([]byte(payload))
		require.NoError(t, err)
		n, err := conn.Read(buf)
		require.NoError(t, err)
		require.Equal(t, conn.LocalAddr().String()+"\n", string(buf[:n]))
	}
}

func TestServeReturnsNilAndClosesConnectionsWhenTheContextEnds(t *testing.T) {
	tcp, _, stop := startServe(t)
	conn := dial(t, "tcp", tcp)
	rd := bufio.NewReader(conn)
	_, err := rd.ReadString('\n')
	require.NoError(t, err)

	require.NoError(t, stop())
	_, err = rd.ReadString('\n')
	require.Error(t, err, "the open connection is closed when Serve returns")
	_, err = net.Dial("tcp", tcp)
	require.Error(t, err, "nothing listens after Serve returned")
}

func TestServeFailsWhenThePortIsTaken(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	err = Serve(t.Context(), busy.Addr().String(), "127.0.0.1:0", logrus.New())
	require.ErrorContains(t, err, "listen tcp "+busy.Addr().String())
}
