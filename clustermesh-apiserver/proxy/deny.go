package proxy

import (
	"bytes"
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// keyRange is [start, end) in etcd's terms: end nil is the single key
// start, end "\x00" everything from start on.
type keyRange struct{ start, end []byte }

// deniedRanges are the key prefixes a proxy refuses to serve, whatever its
// etcd user may read (defence in depth: the peers' proxy denies the cache
// prefix its etcd role does not cover anyway).
type deniedRanges []keyRange

func newDeniedRanges(prefixes []string) deniedRanges {
	out := make(deniedRanges, 0, len(prefixes))
	for _, p := range prefixes {
		out = append(out, keyRange{[]byte(p), []byte(clientv3.GetPrefixRangeEnd(p))})
	}
	return out
}

// touches reports whether a request for [key, rangeEnd) reads a denied key.
func (d deniedRanges) touches(key, rangeEnd []byte) bool {
	for _, r := range d {
		var hit bool
		switch {
		case len(rangeEnd) == 0: // one key
			hit = bytes.Compare(key, r.start) >= 0 && bytes.Compare(key, r.end) < 0
		case bytes.Equal(rangeEnd, []byte{0}): // from key on
			hit = bytes.Compare(key, r.end) < 0
		default:
			hit = bytes.Compare(key, r.end) < 0 && bytes.Compare(r.start, rangeEnd) < 0
		}
		if hit {
			return true
		}
	}
	return false
}

// txnTouches reports whether any read of a transaction, in either branch and
// in nested transactions, or any comparison reads a denied key.
func (d deniedRanges) txnTouches(r *pb.TxnRequest) bool {
	for _, c := range r.Compare {
		if d.touches(c.Key, c.RangeEnd) {
			return true
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if d.touches(v.RequestRange.Key, v.RequestRange.RangeEnd) {
					return true
				}
			case *pb.RequestOp_RequestTxn:
				if d.txnTouches(v.RequestTxn) {
					return true
				}
			}
		}
	}
	return false
}

// deniedWatchStream refuses a watch creation that covers a denied key.
type deniedWatchStream struct {
	grpc.ServerStream
	deny  deniedRanges
	guard *guard
}

func (s *deniedWatchStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if wr, ok := m.(*pb.WatchRequest); ok {
		if cr := wr.GetCreateRequest(); cr != nil && s.deny.touches(cr.Key, cr.RangeEnd) {
			return s.guard.refuseKey(s.Context(), methodWatch, cr.Key)
		}
	}
	return nil
}

// refuseKey refuses a read of a denied key; the metric label stays the
// method (bounded), the log names the key.
func (g *guard) refuseKey(ctx context.Context, method string, key []byte) error {
	g.log.WithField("key", string(key)).Warn("Refused a read of a denied key prefix")
	return g.refuse(ctx, method+" (of a denied key)")
}
