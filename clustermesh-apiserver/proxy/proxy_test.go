package proxy_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
)

const peer = "remote-west"

func snapshot(t *testing.T, env *proxytest.Env) (int64, map[string]string) {
	t.Helper()
	resp, err := env.Etcd.Writer.Get(t.Context(), "podmesh/", clientv3.WithPrefix())
	require.NoError(t, err)
	kvs := map[string]string{}
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = string(kv.Value)
	}
	return resp.Header.Revision, kvs
}

func TestProxyServesReads(t *testing.T) {
	skipShort(t)
	env := proxytest.Start(t, peer)
	ctx := t.Context()
	w := env.Etcd.Writer
	_, err := w.Put(ctx, "podmesh/v1/nodes/east/n1", `{"a":1}`)
	require.NoError(t, err)
	_, err = w.Put(ctx, "podmesh/v1/nodes/east/n2", `{"a":2}`)
	require.NoError(t, err)

	c := env.Client(t, peer)
	get, err := c.Get(ctx, "podmesh/v1/nodes/east/n1")
	require.NoError(t, err)
	require.Len(t, get.Kvs, 1)
	require.Equal(t, `{"a":1}`, string(get.Kvs[0].Value))

	list, err := c.Get(ctx, "podmesh/v1/nodes/east/", clientv3.WithPrefix())
	require.NoError(t, err)
	require.Len(t, list.Kvs, 2)
	require.Equal(t, "podmesh/v1/nodes/east/n1", string(list.Kvs[0].Key))
	require.Equal(t, "podmesh/v1/nodes/east/n2", string(list.Kvs[1].Key))

	// A serializable read after a write sees the write (no stale cache).
	_, err = w.Put(ctx, "podmesh/v1/nodes/east/n1", `{"a":3}`)
	require.NoError(t, err)
	ser, err := c.Get(ctx, "podmesh/v1/nodes/east/n1", clientv3.WithSerializable())
	require.NoError(t, err)
	require.Equal(t, `{"a":3}`, string(ser.Kvs[0].Value))

	// A read-only transaction passes.
	txn, err := c.Txn(ctx).If(clientv3.Compare(clientv3.Version("podmesh/v1/nodes/east/n1"), ">", 0)).
		Then(clientv3.OpGet("podmesh/v1/nodes/east/n2")).Commit()
	require.NoError(t, err)
	require.True(t, txn.Succeeded)
	require.Equal(t, `{"a":2}`, string(txn.Responses[0].GetResponseRange().Kvs[0].Value))

	// Status is served.
	_, err = c.Status(ctx, env.Endpoint)
	require.NoError(t, err)

	// Watch from the list's revision sees later changes, in order.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := c.Watch(wctx, "podmesh/v1/nodes/east/", clientv3.WithPrefix(), clientv3.WithRev(list.Header.Revision+1))
	_, err = w.Delete(ctx, "podmesh/v1/nodes/east/n2")
	require.NoError(t, err)
	var events []*clientv3.Event
	for len(events) < 2 {
		select {
		case resp := <-wch:
			require.NoError(t, resp.Err())
			events = append(events, resp.Events...)
		case <-time.After(30 * time.Second):
			t.Fatalf("watch through the proxy: got %d of 2 events", len(events))
		}
	}
	require.Equal(t, clientv3.EventTypePut, events[0].Type)
	require.Equal(t, `{"a":3}`, string(events[0].Kv.Value))
	require.Equal(t, clientv3.EventTypeDelete, events[1].Type)
	require.Equal(t, "podmesh/v1/nodes/east/n2", string(events[1].Kv.Key))

	// Outside podmesh/ the proxy's own etcd user cannot read.
	_, err = c.Get(ctx, "secret/key")
	require.Error(t, err)
}

func TestProxyRefusesWrites(t *testing.T) {
	skipShort(t)
	env := proxytest.Start(t, peer)
	ctx := t.Context()
	_, err := env.Etcd.Writer.Put(ctx, "podmesh/v1/nodes/east/n1", "v1")
	require.NoError(t, err)
	rev, before := snapshot(t, env)
	c := env.Client(t, peer)
	kvc := pb.NewKVClient(c.ActiveConnection())

	attempts := map[string]func() error{
		"put": func() error {
			_, err := c.Put(ctx, "podmesh/v1/nodes/east/n1", "evil")
			return err
		},
		"delete": func() error {
			_, err := c.Delete(ctx, "podmesh/", clientv3.WithPrefix())
			return err
		},
		"txn with put": func() error {
			_, err := c.Txn(ctx).Then(clientv3.OpGet("podmesh/v1/nodes/east/n1"), clientv3.OpPut("podmesh/v1/x", "evil")).Commit()
			return err
		},
		"txn with delete in the else branch": func() error {
			_, err := c.Txn(ctx).If(clientv3.Compare(clientv3.Version("podmesh/v1/nodes/east/n1"), "=", 0)).
				Else(clientv3.OpDelete("podmesh/v1/nodes/east/n1")).Commit()
			return err
		},
		"nested txn with put": func() error {
			_, err := c.Txn(ctx).Then(clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("podmesh/v1/x", "evil")}, nil)).Commit()
			return err
		},
		"txn with empty op": func() error {
			_, err := kvc.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{}}})
			return err
		},
		"lease grant": func() error {
			_, err := c.Grant(ctx, 60)
			return err
		},
		"lease revoke": func() error {
			_, err := c.Revoke(ctx, 1)
			return err
		},
		"compact": func() error {
			_, err := c.Compact(ctx, rev)
			return err
		},
		"defragment": func() error {
			_, err := c.Defragment(ctx, env.Endpoint)
			return err
		},
		"alarm disarm": func() error {
			_, err := c.AlarmDisarm(ctx, &clientv3.AlarmMember{})
			return err
		},
		"move leader": func() error {
			_, err := c.MoveLeader(ctx, 1)
			return err
		},
		"member add": func() error {
			_, err := c.MemberAdd(ctx, []string{"http://127.0.0.1:1"})
			return err
		},
		"member list": func() error {
			_, err := c.MemberList(ctx)
			return err
		},
		"user add": func() error {
			_, err := c.UserAdd(ctx, "evil", "evil")
			return err
		},
		"auth disable": func() error {
			_, err := c.AuthDisable(ctx)
			return err
		},
		"snapshot": func() error {
			rc, err := c.Snapshot(ctx)
			if err != nil {
				return err
			}
			defer rc.Close()
			buf := make([]byte, 1)
			_, err = rc.Read(buf)
			return err
		},
	}
	for name, try := range attempts {
		t.Run(name, func(t *testing.T) {
			err := try()
			require.Error(t, err)
			require.Equal(t, codes.PermissionDenied, status.Code(err), "error: %v", err)
		})
	}
	after, kvs := snapshot(t, env)
	require.Equal(t, rev, after, "no write reached etcd")
	require.Equal(t, before, kvs)
	require.GreaterOrEqual(t, counterValue(t, env.Metrics.Refused.WithLabelValues("/etcdserverpb.KV/Put")), 1.0)
	require.GreaterOrEqual(t, counterValue(t, env.Metrics.Refused.WithLabelValues("/etcdserverpb.Lease/LeaseGrant")), 1.0)
}

func TestProxyRefusesBadClients(t *testing.T) {
	skipShort(t)
	env := proxytest.Start(t, peer)
	ctx := t.Context()
	_, err := env.Etcd.Writer.Put(ctx, "podmesh/v1/nodes/east/n1", "v1")
	require.NoError(t, err)

	otherCA := proxytest.NewPKI(t)
	expired, err := env.PKI.CA.IssueClient(certs.Options{CommonName: peer, NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
	require.NoError(t, err)

	cases := []struct {
		name   string
		client *certs.KeyPair
		reason string
	}{
		{"certificate from another CA", otherCA.IssueClient(t, peer), proxy.ReasonUnknownAuthority},
		{"expired certificate", expired, proxy.ReasonExpired},
		{"CN not on the allow-list", env.PKI.IssueClient(t, "remote-south"), proxy.ReasonPeerNotAllowed},
		{"no certificate", nil, proxy.ReasonNoCertificate},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			failures := env.Metrics.HandshakeFailures.WithLabelValues(tc.reason)
			before := counterValue(t, failures)
			c := env.ClientWithTLS(t, env.PKI.ClientTLS(t, tc.client))
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			_, err := c.Get(rctx, "podmesh/v1/nodes/east/n1")
			require.Error(t, err, "the read must fail")
			// The client keeps redialling; wait for the server's verdict.
			require.Eventually(t, func() bool { return counterValue(t, failures) > before }, 30*time.Second, 20*time.Millisecond,
				"the proxy refused the handshake for reason %s", tc.reason)
		})
	}

	// The same CA and an allowed CN still work.
	resp, err := env.Client(t, peer).Get(ctx, "podmesh/v1/nodes/east/n1")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an embedded etcd")
	}
}
