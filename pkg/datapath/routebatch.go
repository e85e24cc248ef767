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
	s        *nl.NetlinkSocket
	seq      uint32
	buf      []byte
	lastDump int // routes the last table dump returned: the next one's capacity
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
			var err error
			if b.buf, err = appendRouteOp(b.buf, ops[i], b.seq, i == end-1); err != nil {
				errs[i] = err
				b.buf = appendNoop(b.buf, b.seq, i == end-1)
			}
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

// appendRouteOp appends one route request to buf (the attributes
// podmesh's routes use: destination, gateway or via, MTU, output link),
// written in place: 100,000 of them cost no allocation. On error buf is
// returned unchanged.
func appendRouteOp(buf []byte, op routeOp, seq uint32, ack bool) ([]byte, error) {
	typ, flags := uint16(unix.RTM_NEWROUTE), uint16(unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	switch {
	case op.del:
		typ, flags = unix.RTM_DELROUTE, 0
	case op.replace:
		flags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE
	}
	flags |= unix.NLM_F_REQUEST
	if ack {
		flags |= unix.NLM_F_ACK
	}
	r := op.route
	dst, ok := ipNetToPrefix(r.Dst)
	if !ok {
		return buf, fmt.Errorf("route without destination: %v", r)
	}
	start := len(buf)
	ne := binary.NativeEndian
	buf = ne.AppendUint32(buf, 0) // length, set below
	buf = ne.AppendUint16(buf, typ)
	buf = ne.AppendUint16(buf, flags)
	buf = ne.AppendUint32(buf, seq)
	buf = ne.AppendUint32(buf, 0) // port ID: the kernel's
	rtType := uint8(r.Type)
	if op.del {
		rtType = 0 // any type
	}
	buf = append(buf, uint8(family(dst.Addr())), uint8(dst.Bits()), 0, 0,
		uint8(r.Table), uint8(r.Protocol), uint8(r.Scope), rtType)
	buf = ne.AppendUint32(buf, uint32(r.Flags))
	buf = appendAddrAttr(buf, unix.RTA_DST, dst.Addr())
	if gw := ipToAddr(r.Gw); gw.IsValid() {
		buf = appendAddrAttr(buf, unix.RTA_GATEWAY, gw)
	}
	if v := viaAddr(r.Via); v.IsValid() {
		buf = appendAttrHeader(buf, unix.RTA_VIA, 2+v.BitLen()/8)
		buf = ne.AppendUint16(buf, uint16(family(v)))
		buf = appendAlignedAddr(buf, v, 2)
	}
	if r.MTU > 0 && !op.del {
		buf = appendAttrHeader(buf, unix.RTA_METRICS, unix.SizeofRtAttr+4)
		buf = appendAttrHeader(buf, unix.RTAX_MTU, 4)
		buf = ne.AppendUint32(buf, uint32(r.MTU))
	}
	if r.LinkIndex > 0 {
		buf = appendAttrHeader(buf, unix.RTA_OIF, 4)
		buf = ne.AppendUint32(buf, uint32(r.LinkIndex))
	}
	ne.PutUint32(buf[start:], uint32(len(buf)-start))
	return buf, nil
}

// appendAttrHeader appends an rtattr header for a payload of n bytes.
func appendAttrHeader(buf []byte, typ uint16, n int) []byte {
	buf = binary.NativeEndian.AppendUint16(buf, uint16(unix.SizeofRtAttr+n))
	return binary.NativeEndian.AppendUint16(buf, typ)
}

// appendAddrAttr appends an attribute holding address a.
func appendAddrAttr(buf []byte, typ uint16, a netip.Addr) []byte {
	return appendAlignedAddr(appendAttrHeader(buf, typ, a.BitLen()/8), a, 0)
}

// appendAlignedAddr appends a's bytes and the padding that aligns an
// attribute payload of before+len(a) bytes.
func appendAlignedAddr(buf []byte, a netip.Addr, before int) []byte {
	if a.Is4() {
		b := a.As4()
		buf = append(buf, b[:]...)
	} else {
		b := a.As16()
		buf = append(buf, b[:]...)
	}
	n := before + a.BitLen()/8
	return append(buf, make([]byte, rtaAlign(n)-n)...)
}

// appendNoop keeps the sequence of a batch whole when one request could not
// be encoded: a request for nothing (NLMSG_NOOP) that is only acknowledged.
func appendNoop(buf []byte, seq uint32, ack bool) []byte {
	flags := uint16(unix.NLM_F_REQUEST)
	if ack {
		flags |= unix.NLM_F_ACK
	}
	ne := binary.NativeEndian
	buf = ne.AppendUint32(buf, unix.SizeofNlMsghdr)
	buf = ne.AppendUint16(buf, unix.NLMSG_NOOP)
	buf = ne.AppendUint16(buf, flags)
	buf = ne.AppendUint32(buf, seq)
	return ne.AppendUint32(buf, 0)
}

// dumpRoutes reads every route of the table (both families) in one
// RTM_GETROUTE dump on the batcher's socket and appends each, decoded only
// in the fields podmesh compares (routeSpec.matches) and deletes by, to out.
// It is the full pass's route read: at 100,000 routes the general-purpose
// decoder's allocations cost several times as much. A dump the kernel marks
// interrupted (NLM_F_DUMP_INTR: the table changed meanwhile) is reported as
// netlink.ErrDumpInterrupted after it was read to the end.
func (b *routeBatcher) dumpRoutes(table int, out []kernelRoute) ([]kernelRoute, error) {
	b.seq++
	seq := b.seq
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
	req.Seq = seq
	req.AddData(nl.NewRtMsg()) // family AF_UNSPEC: both families
	if err := unix.Sendto(b.s.GetFd(), req.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return out, fmt.Errorf("send route dump: %w", err)
	}
	interrupted := false
	for {
		msgs, _, err := b.s.Receive()
		if err != nil {
			return out, fmt.Errorf("receive route dump: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue // a late reply to an earlier request
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if interrupted {
					return out, netlink.ErrDumpInterrupted
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
						return out, fmt.Errorf("route dump: %w", unix.Errno(errno))
					}
				}
			case unix.RTM_NEWROUTE:
				if r, ok := decodeRoute(m.Data); ok && r.table == table {
					out = append(out, r)
				}
			}
		}
	}
}

// kernelRoute is a route as the dump decodes it: the fields podmesh
// compares and deletes by, in a form that costs no allocation.
type kernelRoute struct {
	dst       netip.Prefix // invalid: the route has no destination podmesh can name
	gw, via   netip.Addr
	link      int
	mtu       int
	priority  int
	table     int
	flags     int
	family    uint8
	tos       uint8
	protocol  netlink.RouteProtocol
	scope     netlink.Scope
	typ       uint8
	multipath bool // RTA_MULTIPATH: podmesh never installs one, only its presence matters
	encap     bool // RTA_ENCAP: likewise
}

// route is the netlink form, for the few routes a pass deletes or a test
// inspects.
func (k *kernelRoute) route() netlink.Route {
	r := netlink.Route{
		Family:    int(k.family),
		Tos:       int(k.tos),
		Table:     k.table,
		Protocol:  k.protocol,
		Scope:     k.scope,
		Type:      int(k.typ),
		Flags:     k.flags,
		LinkIndex: k.link,
		Priority:  k.priority,
		MTU:       k.mtu,
	}
	if k.dst.IsValid() {
		r.Dst = prefixToIPNet(k.dst)
	}
	if k.gw.IsValid() {
		r.Gw = k.gw.AsSlice()
	}
	if k.via.IsValid() {
		r.Via = &netlink.Via{AddrFamily: family(k.via), Addr: k.via.AsSlice()}
	}
	if k.multipath {
		r.MultiPath = []*netlink.NexthopInfo{{}}
	}
	if k.encap {
		r.Encap = foreignEncap{}
	}
	return r
}

// decodeRoute decodes an RTM_NEWROUTE body: rtmsg, then attributes.
func decodeRoute(b []byte) (kernelRoute, bool) {
	if len(b) < unix.SizeofRtMsg {
		return kernelRoute{}, false
	}
	r := kernelRoute{
		family:   b[0],
		tos:      b[3],
		table:    int(b[4]),
		protocol: netlink.RouteProtocol(b[5]),
		scope:    netlink.Scope(b[6]),
		typ:      b[7],
		flags:    int(binary.NativeEndian.Uint32(b[8:12])),
	}
	dstLen := int(b[1])
	var dst netip.Addr
	attrs := b[unix.SizeofRtMsg:]
	for len(attrs) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		t := binary.NativeEndian.Uint16(attrs[2:4]) &^ unix.NLA_F_NESTED
		if l < unix.SizeofRtAttr || l > len(attrs) {
			return kernelRoute{}, false
		}
		v := attrs[unix.SizeofRtAttr:l]
		switch t {
		case unix.RTA_TABLE:
			if len(v) >= 4 {
				r.table = int(binary.NativeEndian.Uint32(v))
			}
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(v)
		case unix.RTA_GATEWAY:
			r.gw, _ = netip.AddrFromSlice(v)
			r.gw = r.gw.Unmap()
		case unix.RTA_VIA:
			if len(v) > 2 {
				r.via, _ = netip.AddrFromSlice(v[2:])
				r.via = r.via.Unmap()
			}
		case unix.RTA_OIF:
			if len(v) >= 4 {
				r.link = int(binary.NativeEndian.Uint32(v))
			}
		case unix.RTA_PRIORITY:
			if len(v) >= 4 {
				r.priority = int(binary.NativeEndian.Uint32(v))
			}
		case unix.RTA_METRICS:
			r.mtu = metricMTU(v)
		case unix.RTA_MULTIPATH:
			r.multipath = true
		case unix.RTA_ENCAP:
			r.encap = true
		}
		attrs = attrs[min(rtaAlign(l), len(attrs)):]
	}
	if !dst.IsValid() {
		// The default route carries no RTA_DST.
		switch r.family {
		case unix.AF_INET:
			dst = netip.IPv4Unspecified()
		case unix.AF_INET6:
			dst = netip.IPv6Unspecified()
		}
	}
	if dst.IsValid() && dstLen <= dst.BitLen() {
		r.dst = netip.PrefixFrom(dst.Unmap(), dstLen).Masked()
		if dst.Is4In6() {
			r.dst = netip.Prefix{} // not a prefix podmesh names
		}
	}
	return r, true
}

func metricMTU(b []byte) int {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return 0
		}
		if binary.NativeEndian.Uint16(b[2:4]) == unix.RTAX_MTU && l >= unix.SizeofRtAttr+4 {
			return int(binary.NativeEndian.Uint32(b[unix.SizeofRtAttr:]))
		}
		b = b[min(rtaAlign(l), len(b)):]
	}
	return 0
}

func rtaAlign(l int) int { return (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1) }

// foreignEncap marks a route with lightweight-tunnel encapsulation, which
// podmesh never installs; only its presence is compared.
type foreignEncap struct{}

func (foreignEncap) Type() int                { return 0 }
func (foreignEncap) Decode([]byte) error      { return nil }
func (foreignEncap) Encode() ([]byte, error)  { return nil, nil }
func (foreignEncap) String() string           { return "encap" }
func (foreignEncap) Equal(netlink.Encap) bool { return false }
