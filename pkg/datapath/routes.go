package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file holds the route operations the native and vxlan modes share
// (one route per prefix) and the ebpf mode uses for its cluster routes (one
// route per remote cluster pod CIDR).

// routeView is one dump of podmesh's table. A pass over a converged table
// only needs to know that podmesh's routes are exactly the wanted ones, which
// a digest of the dump answers (inSync) without indexing anything; the maps
// of podmesh's own routes (tagged with RouteProtocol) and everybody else's
// by prefix are built on first use (index).
type routeView struct {
	routes        []kernelRoute
	ours, foreign map[netip.Prefix]netlink.Route
	// synced: updateRoutes found podmesh's routes exactly the wanted ones,
	// so prune has nothing to remove either.
	synced bool
}

func readRoutes(rb *routeBatcher) (*routeView, error) {
	rs, err := dumpTable(rb, rb.lastDump)
	if err != nil {
		return nil, err
	}
	rb.lastDump = len(rs)
	return &routeView{routes: rs}, nil
}

// index builds ours and foreign, once.
func (v *routeView) index() {
	if v.ours != nil {
		return
	}
	v.ours = make(map[netip.Prefix]netlink.Route)
	v.foreign = make(map[netip.Prefix]netlink.Route)
	for i := range v.routes {
		k := &v.routes[i]
		switch {
		case !k.dst.IsValid():
		case k.protocol == RouteProtocol:
			v.ours[k.dst] = k.route()
		case k.typ == unix.RTN_UNICAST || k.typ == 0:
			v.foreign[k.dst] = k.route()
		}
	}
}

// inSync reports whether podmesh's routes in the dump are exactly the
// routes of want (spec per entry; link is the output link the specs name, 0
// when they leave it to the kernel) and no foreign route holds a wanted
// prefix: then a full pass has nothing to write or prune. It compares the
// digests of both sides, so it decodes nothing into maps.
func (v *routeView) inSync(want map[netip.Prefix]Entry, spec func(Entry) routeSpec, link int) bool {
	var have, wanted routeDigest
	for i := range v.routes {
		k := &v.routes[i]
		switch {
		case !k.dst.IsValid():
		case k.protocol == RouteProtocol:
			have.add(k.sig(link))
		case k.typ == unix.RTN_UNICAST || k.typ == 0:
			if _, ok := want[k.dst]; ok {
				return false
			}
		}
	}
	for _, e := range want {
		wanted.add(spec(e).sig())
	}
	return have == wanted
}

// errForeignRoute is the failure of a prefix that a route podmesh did not
// create holds; podmesh leaves such a route alone.
var errForeignRoute = errors.New("a route podmesh did not create holds this prefix")

// updateRoutes installs the routes of want (spec per entry) that the view
// shows missing or different, in batches (NLM_F_REPLACE, no read before),
// and reports a prefix a foreign route holds as failed.
func updateRoutes(rb *routeBatcher, v *routeView, want map[netip.Prefix]Entry, spec func(Entry) routeSpec) (written int, failed map[netip.Prefix]error) {
	if v.synced = v.inSync(want, spec, linkOf(want, spec)); v.synced {
		return 0, make(map[netip.Prefix]error)
	}
	v.index()
	plan := planRoutes(want, spec, v.ours, v.foreign, func(netip.Prefix) bool { return false })
	ops := make([]routeOp, len(plan.upsert))
	for i, r := range plan.upsert {
		ops[i] = routeOp{replace: true, route: r}
	}
	written, failed = runRoutes(rb, ops)
	for p := range plan.conflicts {
		failed[p] = errForeignRoute
	}
	return written, failed
}

// writeRoutes installs the routes of objs without a read, in batches: a
// prefix ours says podmesh already routes is replaced in place; any other
// is added exclusively, so a route someone else holds is never overwritten
// (the add fails with EEXIST, and the full pass that follows the failure
// reads the kernel and decides).
func writeRoutes(rb *routeBatcher, objs []Entry, spec func(Entry) routeSpec, ours func(netip.Prefix) bool) (written int, failed map[netip.Prefix]error) {
	ops := make([]routeOp, len(objs))
	for i, e := range objs {
		ops[i] = routeOp{replace: ours(e.Prefix), route: spec(e).route()}
	}
	return runRoutes(rb, ops)
}

// runRoutes sends ops and returns how many it sent and the failures by
// prefix.
func runRoutes(rb *routeBatcher, ops []routeOp) (written int, failed map[netip.Prefix]error) {
	failed = make(map[netip.Prefix]error)
	for i, err := range rb.run(ops) {
		if err == nil {
			continue
		}
		p, _ := routeKey(ops[i].route)
		switch {
		case ops[i].replace:
			failed[p] = fmt.Errorf("replace route %s: %w", p, err)
		case errors.Is(err, unix.EEXIST):
			failed[p] = fmt.Errorf("add route %s: %w: %w", p, errRouteExists, err)
		default:
			failed[p] = fmt.Errorf("add route %s: %w", p, err)
		}
	}
	return len(ops), failed
}

// errRouteExists: an exclusive add found a route in place. Whose it is, is
// for the next full pass to find out.
var errRouteExists = errors.New("a route already holds this prefix; the next full pass compares it")

// deleteRoutes removes podmesh routes, in batches. Removal names podmesh's
// protocol, which the kernel matches, so it cannot remove a foreign route;
// one that is already gone is success.
func deleteRoutes(rb *routeBatcher, rs []netlink.Route) map[netip.Prefix]error {
	failed := make(map[netip.Prefix]error)
	ops := make([]routeOp, len(rs))
	for i, r := range rs {
		// The scope must be the route's own: the kernel matches it on
		// delete, and a mismatch reads as ESRCH, which would pass for
		// "already gone".
		ops[i] = routeOp{del: true, route: netlink.Route{Dst: r.Dst, Table: r.Table, Protocol: RouteProtocol, Family: r.Family, Scope: r.Scope, LinkIndex: r.LinkIndex}}
	}
	for i, err := range rb.run(ops) {
		if err != nil && !isGone(err) {
			p, _ := routeKey(rs[i])
			failed[p] = fmt.Errorf("delete route %s: %w", p, err)
		}
	}
	return failed
}

// specRoutes converts entries into their routes.
func specRoutes(es []Entry, spec func(Entry) routeSpec) []netlink.Route {
	rs := make([]netlink.Route, len(es))
	for i, e := range es {
		rs[i] = spec(e).route()
	}
	return rs
}

// pruneRoutes removes the routes of the view that podmesh created and want
// does not hold.
func pruneRoutes(rb *routeBatcher, v *routeView, want map[netip.Prefix]Entry) (removed int, err error) {
	if v.synced {
		return 0, nil
	}
	v.index()
	var goneP []netip.Prefix
	for p := range v.ours {
		if _, ok := want[p]; !ok {
			goneP = append(goneP, p)
		}
	}
	sortPrefixes(goneP) // a stable order for logs and tests
	gone := make([]netlink.Route, len(goneP))
	for i, p := range goneP {
		gone[i] = v.ours[p]
	}
	failed := deleteRoutes(rb, gone)
	var errs []error
	for _, r := range gone {
		p, _ := routeKey(r)
		if err := failed[p]; err != nil {
			errs = append(errs, err)
			continue
		}
		delete(v.ours, p)
		removed++
	}
	return removed, errors.Join(errs...)
}

// linkOf is the output link the specs of want name (they all name the same
// one); 0 without entries or when the kernel resolves it.
func linkOf(want map[netip.Prefix]Entry, spec func(Entry) routeSpec) int {
	for _, e := range want {
		return spec(e).link
	}
	return 0
}

// routeSig is what routeSpec.matches compares of a route, in one form for
// both sides: a wanted route and a kernel route that matches it have equal
// signatures.
type routeSig struct {
	dst     netip.Prefix
	gw, via netip.Addr
	link    int           // 0 when the specs leave the output link to the kernel
	scope   netlink.Scope // IPv4 only: the kernel keeps none for IPv6 routes
	onlink  bool
	mtu     int
	plain   bool // unicast, no multipath, no encapsulation: the only routes matches accepts
}

func (s routeSpec) sig() routeSig {
	g := routeSig{dst: s.prefix, link: s.link, onlink: s.onlink, mtu: s.mtu, plain: true}
	if s.via {
		g.via = s.gw
	} else {
		g.gw = s.gw
	}
	if s.prefix.Addr().Is4() {
		g.scope = s.scope
	}
	return g
}

// sig is the kernel route's signature against specs naming output link
// link (0: the kernel's choice, not compared).
func (k *kernelRoute) sig(link int) routeSig {
	g := routeSig{
		dst: k.dst, gw: k.gw, via: k.via, mtu: k.mtu,
		onlink: k.flags&int(netlink.FLAG_ONLINK) != 0,
		plain:  (k.typ == 0 || k.typ == unix.RTN_UNICAST) && !k.multipath && !k.encap,
	}
	if link != 0 {
		g.link = k.link
	}
	if k.dst.Addr().Is4() {
		g.scope = k.scope
	}
	return g
}

// routeDigest is an order-independent summary of a set of route signatures:
// their number and two sums of per-signature 64-bit hashes under
// independent seeds. Equal sets have equal digests; a route missing, added
// or different moves both sums, so unequal sets collide only if both 64-bit
// sums do.
type routeDigest struct {
	n    int
	a, b uint64
}

var routeSeedA, routeSeedB = maphash.MakeSeed(), maphash.MakeSeed()

func (d *routeDigest) add(g routeSig) {
	var buf [64]byte
	b := appendAddr(buf[:0], g.dst.Addr())
	b = append(b, byte(g.dst.Bits()))
	b = appendAddr(b, g.gw)
	b = appendAddr(b, g.via)
	b = binary.NativeEndian.AppendUint32(b, uint32(g.link))
	b = binary.NativeEndian.AppendUint32(b, uint32(g.mtu))
	b = append(b, byte(g.scope), boolByte(g.onlink), boolByte(g.plain))
	d.n++
	d.a += maphash.Bytes(routeSeedA, b)
	d.b += maphash.Bytes(routeSeedB, b)
}

// appendAddr appends a's family (0: invalid) and its 16 bytes.
func appendAddr(b []byte, a netip.Addr) []byte {
	var fam byte
	switch {
	case a.Is4():
		fam = 4
	case a.IsValid():
		fam = 6
	}
	a16 := a.As16()
	if !a.IsValid() {
		a16 = [16]byte{}
	}
	return append(append(b, fam), a16[:]...)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}
