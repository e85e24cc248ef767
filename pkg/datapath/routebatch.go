package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// routeBatcher writes route requests to the kernel many to one sendmsg over
// one netlink socket, the fewest round trips rtnetlink allows: the kernel
// handles every message of a send in order before the call returns, answers
// only failures (no NLM_F_ACK on the others) and acknowledges the last
// message of each send, so one receive loop per send collects the outcome.
// 100,000 routes cost a few hundred system calls instead of 200,000.
type routeBatcher struct {
	s   *nl.NetlinkSocket
	seq uint32
	buf []byte
}

// routeBatchOps bounds one send (about 100 bytes a request): well below the
// default socket buffers, so the kernel's replies to a send whose every
// request fails still fit.
const routeBatchOps = 256

// routeOp is one request of a batch.
type routeOp struct {
	del     bool // RTM_DELROUTE; else RTM_NEWROUTE
	replace bool // NEWROUTE with NLM_F_REPLACE; else NLM_F_EXCL (never overwrites)
	route   netlink.Route
}

// newRouteBatcher opens the socket in ns (closed: the current namespace).
func newRouteBatcher(ns netns.NsHandle) (*routeBatcher, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket: %w", err)
	}
	return &routeBatcher{s: s}, nil
}

func (b *routeBatcher) close() {
	if b != nil && b.s != nil {
		b.s.Close()
	}
}

// run executes ops in order and returns each one's error (nil: done).
func (b *routeBatcher) run(ops []routeOp) []error {
	errs := make([]error, len(ops))
	for start := 0; start < len(ops); {
		b.buf = b.buf[:0]
		first := b.seq + 1
		end := min(start+routeBatchOps, len(ops))
		for i := start; i < end; i++ {
			b.seq++
			msg, err := encodeRouteOp(ops[i], b.seq, i == end-1)
			if err != nil {
				errs[i] = err
				msg = encodeNoop(b.seq, i == end-1)
			}
			b.buf = append(b.buf, msg...)
		}
		if err := b.exchange(first, errs[start:end]); err != nil {
			for i := start; i < end; i++ {
				if errs[i] == nil {
					errs[i] = err
				}
			}
		}
		start = end
	}
	return errs
}

// exchange sends b.buf and reads replies until the acknowledgement of its
// last message; errs[seq-first] receives each request's failure.
func (b *routeBatcher) exchange(first uint32, errs []error) error {
	if err := unix.Sendto(b.s.GetFd(), b.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send route batch: %w", err)
	}
	last := b.seq
	for {
		msgs, _, err := b.s.Receive()
		if err != nil {
			return fmt.Errorf("receive route batch replies: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			seq := m.Header.Seq
			if seq < first || seq > last {
				continue // a reply to an earlier, failed exchange
			}
			if errno := -int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 && errs[seq-first] == nil {
				errs[seq-first] = unix.Errno(errno)
			}
			if seq == last {
				return nil
			}
		}
	}
}

// encodeRouteOp serialises one route request (the attributes podmesh's
// routes use: destination, gateway or via, output link, MTU).
func encodeRouteOp(op routeOp, seq uint32, ack bool) ([]byte, error) {
	typ, flags := unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL
	switch {
	case op.del:
		typ, flags = unix.RTM_DELROUTE, 0
	case op.replace:
		flags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE
	}
	if ack {
		flags |= unix.NLM_F_ACK
	}
	r := op.route
	dst, ok := ipNetToPrefix(r.Dst)
	if !ok {
		return nil, fmt.Errorf("route without destination: %v", r)
	}
	req := nl.NewNetlinkRequest(typ, flags)
	req.Seq = seq
	msg := nl.NewRtMsg()
	msg.Family = uint8(family(dst.Addr()))
	msg.Dst_len = uint8(dst.Bits())
	msg.Table = uint8(r.Table)
	msg.Protocol = uint8(r.Protocol)
	msg.Scope = uint8(r.Scope)
	msg.Type = uint8(r.Type)
	msg.Flags = uint32(r.Flags)
	if op.del {
		msg.Type = 0 // any type
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
	if gw := ipToAddr(r.Gw); gw.IsValid() {
		req.AddData(nl.NewRtAttr(unix.RTA_GATEWAY, gw.AsSlice()))
	}
	if v := viaAddr(r.Via); v.IsValid() {
		req.AddData(nl.NewRtAttr(unix.RTA_VIA, encodeVia(v)))
	}
	if r.MTU > 0 && !op.del {
		m := nl.NewRtAttr(unix.RTA_METRICS, nil)
		m.AddRtAttr(unix.RTAX_MTU, nl.Uint32Attr(uint32(r.MTU)))
		req.AddData(m)
	}
	if r.LinkIndex > 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(r.LinkIndex))))
	}
	return req.Serialize(), nil
}

func encodeVia(a netip.Addr) []byte {
	b := make([]byte, 2, 18)
	binary.NativeEndian.PutUint16(b, uint16(family(a)))
	return append(b, a.AsSlice()...)
}

// encodeNoop keeps the sequence of a batch whole when one request could not
// be encoded: a request for nothing (NLMSG_NOOP) that is only acknowledged.
func encodeNoop(seq uint32, ack bool) []byte {
	flags := 0
	if ack {
		flags = unix.NLM_F_ACK
	}
	req := nl.NewNetlinkRequest(unix.NLMSG_NOOP, flags)
	req.Seq = seq
	return req.Serialize()
}
