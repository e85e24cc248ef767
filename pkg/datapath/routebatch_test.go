package datapath

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// libraryRouteOp builds the request appendRouteOp writes with the netlink
// library's encoder, as the reference.
func libraryRouteOp(op routeOp, seq uint32, ack bool) []byte {
	flags := unix.NLM_F_CREATE | unix.NLM_F_EXCL
	typ := unix.RTM_NEWROUTE
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
	dst, _ := ipNetToPrefix(r.Dst)
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
		msg.Type = 0
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
	if gw := ipToAddr(r.Gw); gw.IsValid() {
		req.AddData(nl.NewRtAttr(unix.RTA_GATEWAY, gw.AsSlice()))
	}
	if v := viaAddr(r.Via); v.IsValid() {
		b := binary.NativeEndian.AppendUint16(nil, uint16(family(v)))
		req.AddData(nl.NewRtAttr(unix.RTA_VIA, append(b, v.AsSlice()...)))
	}
	if r.MTU > 0 && !op.del {
		m := nl.NewRtAttr(unix.RTA_METRICS, nil)
		m.AddRtAttr(unix.RTAX_MTU, nl.Uint32Attr(uint32(r.MTU)))
		req.AddData(m)
	}
	if r.LinkIndex > 0 {
		req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(r.LinkIndex))))
	}
	return req.Serialize()
}

// The in-place encoder writes, byte for byte, what the netlink library's
// encoder writes for every route shape podmesh installs or deletes.
func TestAppendRouteOpEncodesAsTheNetlinkLibrary(t *testing.T) {
	var ops []routeOp
	for _, c := range []struct {
		e  Entry
		rp routeParams
	}{
		{Entry{Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("192.168.0.3")}, routeParams{mode: ModeNative, mtu: 1500}},
		{Entry{Prefix: mustPrefix("10.2.0.0/24"), TunnelEndpoint: mustAddr("fd00::3")}, routeParams{mode: ModeNative, mtu: 1500}},
		{Entry{Prefix: mustPrefix("fd02::/64"), TunnelEndpoint: mustAddr("192.168.0.3")}, routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1450}},
		{Entry{Prefix: mustPrefix("10.2.0.7/32"), TunnelEndpoint: mustAddr("fd00::3")}, routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1430}},
		{Entry{Prefix: mustPrefix("10.2.0.7/32"), TunnelEndpoint: mustAddr("192.168.0.3")}, routeParams{mode: ModeVXLAN, linkIndex: 7, mtu: 1450}},
		{Entry{Prefix: mustPrefix("fd02::/48"), TunnelEndpoint: mustAddr("fd00::3")}, routeParams{mode: ModeEBPF, linkIndex: 9, mtu: 1430}},
		{Entry{Prefix: mustPrefix("0.0.0.0/0"), TunnelEndpoint: mustAddr("192.168.0.3")}, routeParams{mode: ModeNative}},
	} {
		r := specFor(c.e, c.rp).route()
		ops = append(ops, routeOp{route: r}, routeOp{replace: true, route: r},
			routeOp{del: true, route: netlink.Route{Dst: r.Dst, Table: r.Table, Protocol: RouteProtocol, Family: r.Family, Scope: r.Scope, LinkIndex: r.LinkIndex}})
	}
	var buf []byte
	for i, op := range ops {
		want := libraryRouteOp(op, uint32(i+1), i%2 == 0)
		before := len(buf)
		var err error
		buf, err = appendRouteOp(buf, op, uint32(i+1), i%2 == 0)
		require.NoError(t, err)
		assert.Equal(t, want, buf[before:], "op %d: %+v", i, op)
	}

	_, err := appendRouteOp(buf, routeOp{}, 1, false)
	assert.Error(t, err, "a route without destination")
	noop := nl.NewNetlinkRequest(unix.NLMSG_NOOP, unix.NLM_F_ACK)
	noop.Seq = 5
	assert.Equal(t, noop.Serialize(), appendNoop(nil, 5, true))
}
