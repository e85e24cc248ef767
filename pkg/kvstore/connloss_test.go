package kvstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
)

func TestConnectionLostFiresWhenTheConnectionBreaksNotBefore(t *testing.T) {
	e := kvstoretest.StartEtcd(t, "cl")
	fwd := kvstoretest.StartForwarder(t, e.Addr)
	cli, err := kvstore.NewClient(connect(t, e, fwd.Addr), kvstore.ClientOptions{DialTimeout: 2 * time.Second, KeepAlive: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	lost := kvstore.ConnectionLost(ctx, cli)
	require.NotNil(t, lost)

	for range 3 {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cli.Get(rctx, "k")
		rcancel()
		require.NoError(t, err)
	}
	select {
	case <-lost:
		t.Fatal("reported a loss while every request was answered")
	default:
	}

	fwd.Cut()
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("the cut connection was never reported")
	}
}

func TestConnectionLostIgnoresClientsWithoutAConnection(t *testing.T) {
	require.Nil(t, kvstore.ConnectionLost(context.Background(), struct{}{}))
}
