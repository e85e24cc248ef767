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

func readRoutes(h *netlink.Handle) (*routeView, error) {
	ours, foreign, err := listRoutes(h)
	if err != nil {
		return nil, err
	}
	return &routeView{ours: ours, foreign: foreign}, nil
}

// errForeignRoute is the failure of a prefix that a route podmesh did not
// create holds; podmesh leaves such a route alone.
var errForeignRoute = errors.New("a route podmesh did not create holds this prefix")

// updateRoutes installs the routes of want (spec per entry). With a view it
// writes only the routes that are missing or different and reports a prefix
// a foreign route holds as failed. Without one it writes every route: a
// prefix ours says podmesh already routes is replaced in place; any other is
// added exclusively, so a route someone else holds is never overwritten (the
// add fails with EEXIST, and the full pass that follows the failure reads the
// kernel and decides).
func updateRoutes(h *netlink.Handle, v *routeView, want map[netip.Prefix]Entry, spec func(Entry) routeSpec, ours func(netip.Prefix) bool) (written int, failed map[netip.Prefix]error) {
	failed = make(map[netip.Prefix]error)
	if v != nil {
		plan := planRoutes(want, spec, v.ours, v.foreign, func(netip.Prefix) bool { return false })
		for p := range plan.conflicts {
			failed[p] = errForeignRoute
		}
		for i := range plan.upsert {
			r := &plan.upsert[i]
			written++
			if err := h.RouteReplace(r); err != nil {
				p, _ := routeKey(*r)
				failed[p] = fmt.Errorf("replace route %s: %w", p, err)
			}
		}
		return written, failed
	}
	for p, e := range want {
		r := spec(e).route()
		written++
		if ours(p) {
			if err := h.RouteReplace(&r); err != nil {
				failed[p] = fmt.Errorf("replace route %s: %w", p, err)
			}
			continue
		}
		if err := h.RouteAdd(&r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("%w: %w", errRouteExists, err)
			}
			failed[p] = fmt.Errorf("add route %s: %w", p, err)
		}
	}
	return written, failed
}

// errRouteExists: an exclusive add found a route in place. Whose it is, is
// for the next full pass to find out.
var errRouteExists = errors.New("a route already holds this prefix; the next full pass compares it")

// deleteRoutes removes the routes of es. Removal names podmesh's protocol,
// which the kernel matches, so it cannot remove a foreign route; one that is
// already gone is success.
func deleteRoutes(h *netlink.Handle, es []Entry, spec func(Entry) routeSpec) map[netip.Prefix]error {
	failed := make(map[netip.Prefix]error)
	for _, e := range es {
		if err := deleteRoute(h, spec(e).route()); err != nil {
			failed[e.Prefix] = err
		}
	}
	return failed
}

// pruneRoutes removes the routes of the view that podmesh created and want
// does not hold. keep, if not nil, spares more of them.
func pruneRoutes(h *netlink.Handle, v *routeView, want map[netip.Prefix]Entry, keep func(netlink.Route) bool) (removed int, err error) {
	var errs []error
	for _, p := range sortedPrefixes(v.ours) {
		r := v.ours[p]
		if _, ok := want[p]; ok || (keep != nil && keep(r)) {
			continue
		}
		if err := deleteRoute(h, r); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(v.ours, p)
		removed++
	}
	return removed, errors.Join(errs...)
}
