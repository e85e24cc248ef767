package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file holds the route operations the native and vxlan modes share
// (one route per prefix) and the ebpf mode uses for its cluster routes (one
// route per remote cluster pod CIDR).

// routeView is one dump of podmesh's table, split into podmesh's own routes
// (tagged with RouteProtocol) and everybody else's.
type routeView struct {
	ours, foreign map[netip.Prefix]netlink.Route
}

func readRoutes(rb *routeBatcher) (*routeView, error) {
	ours, foreign, err := listRoutes(rb)
	if err != nil {
		return nil, err
	}
	return &routeView{ours: ours, foreign: foreign}, nil
}

// errForeignRoute is the failure of a prefix that a route podmesh did not
// create holds; podmesh leaves such a route alone.
var errForeignRoute = errors.New("a route podmesh did not create holds this prefix")

// updateRoutes installs the routes of want (spec per entry), in batches.
// With a view it writes only the routes that are missing or different
// (NLM_F_REPLACE, no read before) and reports a prefix a foreign route holds
// as failed. Without one it writes every route: a prefix ours says podmesh
// already routes is replaced in place; any other is added exclusively, so a
// route someone else holds is never overwritten (the add fails with EEXIST,
// and the full pass that follows the failure reads the kernel and decides).
func updateRoutes(rb *routeBatcher, v *routeView, want map[netip.Prefix]Entry, spec func(Entry) routeSpec, ours func(netip.Prefix) bool) (written int, failed map[netip.Prefix]error) {
	failed = make(map[netip.Prefix]error)
	var ops []routeOp
	if v != nil {
		plan := planRoutes(want, spec, v.ours, v.foreign, func(netip.Prefix) bool { return false })
		for p := range plan.conflicts {
			failed[p] = errForeignRoute
		}
		ops = make([]routeOp, len(plan.upsert))
		for i, r := range plan.upsert {
			ops[i] = routeOp{replace: true, route: r}
		}
	} else {
		ops = make([]routeOp, 0, len(want))
		for p, e := range want {
			ops = append(ops, routeOp{replace: ours(p), route: spec(e).route()})
		}
	}
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
