package kvstore

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

// grpcConn is the part of *clientv3.Client that exposes its connection.
type grpcConn interface {
	ActiveConnection() *grpc.ClientConn
}

// ConnectionLost returns a channel that is closed when the connection of
// client leaves the ready state after having been ready — a broken TCP
// connection, a GOAWAY, a failed keepalive — until ctx ends. The etcd client
// would reconnect and resume its watches on its own, but behind the same
// address there may now be a different server: a remote clustermesh-
// apiserver replaced with an empty data directory rebuilds its etcd, whose
// revisions start again at 1, and a watch resumed from the old revision
// waits for a future that never carries the changes made meanwhile. So a
// consumer ends its session when the connection breaks and lists again in
// a new one. Clients that are not gRPC-backed (fakes, in-process stores)
// never report a loss: the channel is nil.
//
// Call it right after the client is created, before the session reads
// anything: the state is sampled synchronously, so a break after that is
// never missed.
func ConnectionLost(ctx context.Context, client any) <-chan struct{} {
	c, ok := client.(grpcConn)
	if !ok {
		return nil
	}
	conn := c.ActiveConnection()
	if conn == nil {
		return nil
	}
	lost := make(chan struct{})
	state := conn.GetState()
	go func() {
		wasReady := false
		for {
			if state == connectivity.Ready {
				wasReady = true
			} else if wasReady {
				close(lost)
				return
			}
			if !conn.WaitForStateChange(ctx, state) {
				return // ctx ended
			}
			state = conn.GetState()
		}
	}()
	return lost
}

// ErrConnectionLost ends a session whose connection broke (see
// ConnectionLost); the next session lists everything again.
var ErrConnectionLost = errors.New("unreachable: connection to the remote broke; listing again in a new session, since the server behind the address may have been replaced")
