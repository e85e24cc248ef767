package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A delta pass applies only what changed in the desired set since the last
// pass that fully succeeded, trusting the kernel to still hold that pass's
// result; the periodic full pass (which re-reads the kernel) repairs whatever
// changed behind podmesh's back. This keeps a burst of changes on top of a
// large set proportional to the changes, not to the set (the cilium/statedb
// model: incremental updates plus a periodic full prune).

// delta is the difference between two desired sets.
type delta struct {
	add    []Entry                // prefixes not in the previous set
	change []Entry                // prefixes whose entry changed (new value)
	stale  []Entry                // previous values of changed prefixes
	remove []Entry                // previous values of prefixes no longer wanted
	want   map[netip.Prefix]Entry // the whole new set
}

func (d delta) empty() bool { return len(d.add)+len(d.change)+len(d.remove) == 0 }

// applyRouteDelta adds, replaces and removes the routes of a delta (adds and
// changes first). A new prefix is added with NLM_F_EXCL, so a route someone
// else holds for it is never overwritten: the add fails with EEXIST and the
// caller falls back to a full pass, which reads the kernel and reports the
// conflict. Removal names podmesh's protocol, which the kernel matches, so it
// cannot remove a foreign route either.
func applyRouteDelta(h *netlink.Handle, d delta, route func(Entry) netlink.Route) (failed map[netip.Prefix]error, removed []netip.Prefix, writes int, needFull bool) {
	failed = make(map[netip.Prefix]error)
	for _, e := range d.add {
		r := route(e)
		writes++
		if err := h.RouteAdd(&r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				needFull = true
			}
			failed[e.Prefix] = fmt.Errorf("add route %s: %w", e.Prefix, err)
		}
	}
	for _, e := range d.change {
		r := route(e)
		writes++
		if err := h.RouteReplace(&r); err != nil {
			failed[e.Prefix] = fmt.Errorf("replace route %s: %w", e.Prefix, err)
		}
	}
	for _, e := range d.remove {
		writes++
		if err := deleteRoute(h, route(e)); err != nil {
			failed[e.Prefix] = err
			continue
		}
		removed = append(removed, e.Prefix)
	}
	return failed, removed, writes, needFull
}
