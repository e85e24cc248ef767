package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Config of one proxy.
type Config struct {
	// Listen is the TCP address to serve on, e.g. ":2379" or "127.0.0.1:0".
	// Ignored when Listener is set.
	Listen string
	// Listener, when set, is served instead of listening on Listen.
	Listener net.Listener
	// TLS is the serving configuration, normally from ServerTLS or
	// LoadServerTLS. Required: the proxy never serves plain text.
	TLS *tls.Config
	// Client talks to etcd; it should be authenticated as the read-only
	// user. The proxy does not close it.
	Client *clientv3.Client
	// DenyPrefixes are key prefixes never served, whatever Client may read:
	// a Range, Txn or Watch that touches one is refused with
	// PermissionDenied (the peers' proxy denies meshapi.CacheRoot).
	DenyPrefixes []string
	// Metrics, when set, receives refusals and handshake failures.
	Metrics *Metrics
	Log     logrus.FieldLogger
}

// Proxy is a running read-only proxy.
type Proxy struct {
	addr      net.Addr
	server    *grpc.Server
	cancel    context.CancelFunc
	watchDone <-chan struct{}
	serveErr  chan error
	stopOnce  sync.Once
}

// Allowed gRPC methods; everything else is refused with PermissionDenied.
const (
	methodRange  = "/etcdserverpb.KV/Range"
	methodTxn    = "/etcdserverpb.KV/Txn"
	methodWatch  = "/etcdserverpb.Watch/Watch"
	methodStatus = "/etcdserverpb.Maintenance/Status"
)

var allowedMethods = map[string]bool{methodRange: true, methodTxn: true, methodWatch: true, methodStatus: true}

// Start listens and serves until Stop or until ctx is done.
func Start(ctx context.Context, cfg Config) (_ *Proxy, err error) {
	if cfg.Client == nil {
		return nil, errors.New("start proxy: no etcd client")
	}
	if cfg.TLS == nil {
		return nil, errors.New("start proxy: no TLS configuration")
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	lis := cfg.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("start proxy: listen on %s: %w", cfg.Listen, err)
		}
	}
	// The watch proxy gets its own context, not ctx: when the caller shuts
	// down, Stop must first close every client connection and only then
	// cancel the upstream watches. The other way round, the watch proxy
	// tells clients their watches were canceled ("context canceled"),
	// instead of the connection simply going away, which clients resume
	// from their last revision on their own.
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g := &guard{metrics: cfg.Metrics, log: cfg.Log, deny: newDeniedRanges(cfg.DenyPrefixes)}
	creds := &countingCreds{TransportCredentials: credentials.NewTLS(cfg.TLS), failures: cfg.Metrics.HandshakeFailures, log: cfg.Log}
	srv := grpc.NewServer(
		grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
		grpc.UnknownServiceHandler(g.unknown),
		grpc.MaxConcurrentStreams(math.MaxUint32),
		// Agents ping every few seconds to notice a dead proxy (pkg/kvstore
		// defaults to 10 s, its tests to 1 s). gRPC's default policy
		// (at most one ping per 5 min) would answer that with GOAWAY
		// "too_many_pings" and break every watch.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
		// And the proxy notices dead agents, freeing their watches.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	watch, watchDone := grpcproxy.NewWatchProxy(pctx, zap.NewNop(), cfg.Client)
	pb.RegisterKVServer(srv, &readOnlyKV{kv: cfg.Client.KV, guard: g})
	pb.RegisterWatchServer(srv, watch)
	pb.RegisterMaintenanceServer(srv, &statusOnly{MaintenanceServer: grpcproxy.NewMaintenanceProxy(cfg.Client)})

	p := &Proxy{addr: lis.Addr(), server: srv, cancel: cancel, watchDone: watchDone, serveErr: make(chan error, 1)}
	go func() {
		if err := srv.Serve(lis); err != nil {
			p.serveErr <- fmt.Errorf("serve proxy: %w", err)
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			p.Stop()
		case <-pctx.Done():
		}
	}()
	cfg.Log.WithField("address", p.addr.String()).Info("Read-only etcd proxy serving")
	return p, nil
}

// Err delivers the error that stopped serving, if it stopped on its own
// (not through Stop).
func (p *Proxy) Err() <-chan error { return p.serveErr }

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.addr.String() }

// Stop closes the listener and every connection, and waits for the watch
// proxy to finish.
func (p *Proxy) Stop() {
	p.stopOnce.Do(func() {
		p.server.Stop()
		p.cancel()
		<-p.watchDone
	})
}

// guard enforces the allow-list.
type guard struct {
	metrics *Metrics
	log     logrus.FieldLogger
	deny    deniedRanges
}

func (g *guard) refuse(ctx context.Context, method string) error {
	cn := ""
	if p, ok := peer.FromContext(ctx); ok {
		cn = peerCN(p.AuthInfo)
	}
	g.metrics.Refused.WithLabelValues(method).Inc()
	g.log.WithFields(logrus.Fields{"method": method, "peer": cn}).Warn("Refused RPC on the read-only proxy")
	return status.Errorf(codes.PermissionDenied, "podmesh proxy is read-only: %s is not allowed", method)
}

func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !allowedMethods[info.FullMethod] {
		return nil, g.refuse(ctx, info.FullMethod)
	}
	return handler(ctx, req)
}

func (g *guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !allowedMethods[info.FullMethod] {
		return g.refuse(ss.Context(), info.FullMethod)
	}
	if info.FullMethod == methodWatch && len(g.deny) > 0 {
		ss = &deniedWatchStream{ServerStream: ss, deny: g.deny, guard: g}
	}
	return handler(srv, ss)
}

func (g *guard) unknown(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	return g.refuse(ss.Context(), method)
}

// readOnlyKV serves Range and write-free Txn straight from etcd.
type readOnlyKV struct {
	pb.UnimplementedKVServer
	kv    clientv3.KV
	guard *guard
}

func (k *readOnlyKV) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if k.guard.deny.touches(r.Key, r.RangeEnd) {
		return nil, k.guard.refuseKey(ctx, methodRange, r.Key)
	}
	resp, err := k.kv.Do(ctx, grpcproxy.RangeRequestToOp(r))
	if err != nil {
		return nil, err
	}
	return (*pb.RangeResponse)(resp.Get()), nil
}

func (k *readOnlyKV) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if txnWrites(r) {
		return nil, k.guard.refuse(ctx, methodTxn+" (with a write)")
	}
	if k.guard.deny.txnTouches(r) {
		return nil, k.guard.refuseKey(ctx, methodTxn, nil)
	}
	resp, err := k.kv.Do(ctx, grpcproxy.TxnRequestToOp(r))
	if err != nil {
		return nil, err
	}
	return (*pb.TxnResponse)(resp.Txn()), nil
}

// Put, DeleteRange and Compact never reach here (the guard refuses them);
// they refuse again in case the guard is ever bypassed.
func (k *readOnlyKV) Put(ctx context.Context, _ *pb.PutRequest) (*pb.PutResponse, error) {
	return nil, k.guard.refuse(ctx, "/etcdserverpb.KV/Put")
}

func (k *readOnlyKV) DeleteRange(ctx context.Context, _ *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return nil, k.guard.refuse(ctx, "/etcdserverpb.KV/DeleteRange")
}

func (k *readOnlyKV) Compact(ctx context.Context, _ *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return nil, k.guard.refuse(ctx, "/etcdserverpb.KV/Compact")
}

// txnWrites reports whether any operation of a transaction, in either
// branch and in nested transactions, writes.
func txnWrites(r *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
			case *pb.RequestOp_RequestTxn:
				if txnWrites(v.RequestTxn) {
					return true
				}
			default: // put, delete range, and anything added later
				return true
			}
		}
	}
	return false
}

// statusOnly exposes Maintenance.Status; the guard refuses the rest.
type statusOnly struct {
	pb.MaintenanceServer
}
