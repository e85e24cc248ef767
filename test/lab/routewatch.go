package lab

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteEvent is one change of a podmesh route in a node's namespace, with
// the time the lab received the kernel's notification (or, for the
// ipcache, read the change).
type RouteEvent struct {
	Time  time.Time
	Added bool
	// Kind is what changed: EventRoute, EventIPCache, EventNeigh or
	// EventFDB.
	Kind string
	// Prefix is the route's or ipcache entry's prefix; for a neighbour
	// entry its gateway, for an FDB entry its underlay endpoint, as a
	// host prefix.
	Prefix netip.Prefix
}

// The kinds of RouteEvent.
const (
	EventRoute   = "route"
	EventIPCache = "ipcache entry"
	EventNeigh   = "tunnel neighbour entry"
	EventFDB     = "tunnel FDB entry"
)

// RouteWatch records every change of podmesh routes in one namespace from
// the moment it is created: latency is measured on kernel notifications,
// not by polling, and a withdrawal that is undone at once is still seen.
type RouteWatch struct {
	NetNS string
	done  chan struct{}
	wg    sync.WaitGroup

	// mu protects events, err and changed.
	mu      sync.Mutex
	events  []RouteEvent
	err     error
	changed chan struct{}
}

// WatchRoutes starts recording podmesh route changes in netnsName. Its
// goroutine is owned by the watch and ends on Close.
func WatchRoutes(netnsName string) (*RouteWatch, error) {
	ns, err := netns.GetFromPath(NetNSPath(netnsName))
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsName, err)
	}
	defer ns.Close()
	w := &RouteWatch{NetNS: netnsName, done: make(chan struct{}), changed: make(chan struct{})}
	ch := make(chan netlink.RouteUpdate, 4096)
	if err := netlink.RouteSubscribeWithOptions(ch, w.done, netlink.RouteSubscribeOptions{
		Namespace:     &ns,
		ErrorCallback: func(err error) { w.setErr(err) },
	}); err != nil {
		return nil, fmt.Errorf("watch routes in %s: %w", netnsName, err)
	}
	w.wg.Go(func() {
		for u := range ch {
			if u.Route.Protocol != PodmeshRouteProtocol || u.Route.Dst == nil {
				continue
			}
			addr, ok := netip.AddrFromSlice(u.Route.Dst.IP)
			if !ok {
				continue
			}
			bits, _ := u.Route.Dst.Mask.Size()
			w.record(RouteEvent{Time: time.Now(), Added: u.Type == unix.RTM_NEWROUTE, Kind: EventRoute, Prefix: netip.PrefixFrom(addr.Unmap(), bits)})
		}
	})
	return w, nil
}

// ipcachePollInterval is how often WatchPrefixes reads an ebpf node's
// ipcache; ipcache event times are accurate to it.
const ipcachePollInterval = 2 * time.Millisecond

// WatchPrefixes records the changes of what node n forwards to remote
// prefixes: its podmesh routes, from kernel notifications; in ebpf mode
// (where a route covers a whole remote cluster and per-node and per-pod
// prefixes live only in the ipcache) its ipcache entries too, read every
// ipcachePollInterval: an entry added or changed is an Added event, one
// gone a withdrawal (a read that fails, an agent replacing its pins, is
// skipped, never taken for a withdrawal); in vxlan mode the permanent
// neighbour and FDB entries on the tunnel device too, from kernel
// notifications.
func WatchPrefixes(n *Node) (*RouteWatch, error) {
	w, err := WatchRoutes(n.NetNS)
	if err != nil {
		return nil, err
	}
	switch n.Mode {
	case ModeEBPF:
		err = w.pollIPCache(n)
	case ModeVXLAN:
		err = w.watchTunnelPeers(n)
	}
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	return w, nil
}

// pollIPCache records the changes of n's ipcache, read every
// ipcachePollInterval.
func (w *RouteWatch) pollIPCache(n *Node) error {
	prev, err := ReadIPCache(n.BPFRoot)
	if err != nil {
		return err
	}
	w.wg.Go(func() {
		t := time.NewTicker(ipcachePollInterval)
		defer t.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-t.C:
			}
			cur, err := ReadIPCache(n.BPFRoot)
			if err != nil {
				continue
			}
			now := time.Now()
			var evs []RouteEvent
			for p, e := range cur {
				if old, ok := prev[p]; !ok || old != e {
					evs = append(evs, RouteEvent{Time: now, Added: true, Kind: EventIPCache, Prefix: p})
				}
			}
			for p := range prev {
				if _, ok := cur[p]; !ok {
					evs = append(evs, RouteEvent{Time: now, Added: false, Kind: EventIPCache, Prefix: p})
				}
			}
			prev = cur
			w.record(evs...)
		}
	})
	return nil
}

// watchTunnelPeers records the changes of the permanent neighbour and FDB
// entries on n's tunnel device (as it exists now), from kernel
// notifications: a permanent entry added is an Added event; one deleted,
// or turned into a non-permanent one (the kernel marks an entry failed
// before it deletes it), a withdrawal.
func (w *RouteWatch) watchTunnelPeers(n *Node) error {
	h, err := netlinkIn(n.NetNS)
	if err != nil {
		return err
	}
	link, err := h.LinkByName(TunnelDevice)
	h.Close()
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", TunnelDevice, n.NetNS, err)
	}
	idx := link.Attrs().Index
	type peer struct {
		kind string
		addr netip.Addr
	}
	permanent := map[peer]bool{}
	have, err := ReadTunnelPeers(n.NetNS)
	if err != nil {
		return err
	}
	for gw := range have.Neigh {
		permanent[peer{EventNeigh, gw}] = true
	}
	for _, ep := range have.FDB {
		permanent[peer{EventFDB, ep}] = true
	}
	ns, err := netns.GetFromPath(NetNSPath(n.NetNS))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.NetNS, err)
	}
	defer ns.Close()
	ch := make(chan netlink.NeighUpdate, 4096)
	if err := netlink.NeighSubscribeWithOptions(ch, w.done, netlink.NeighSubscribeOptions{
		Namespace:     &ns,
		ErrorCallback: func(err error) { w.setErr(err) },
	}); err != nil {
		return fmt.Errorf("watch neighbours in %s: %w", n.NetNS, err)
	}
	w.wg.Go(func() {
		for u := range ch {
			addr, ok := netip.AddrFromSlice(u.IP)
			if u.LinkIndex != idx || !ok {
				continue
			}
			p := peer{EventNeigh, addr.Unmap()}
			if u.Family == unix.AF_BRIDGE {
				p.kind = EventFDB
			}
			added := u.Type == unix.RTM_NEWNEIGH && u.State&netlink.NUD_PERMANENT != 0
			if !added && !permanent[p] {
				continue // never was podmesh's
			}
			permanent[p] = added
			w.record(RouteEvent{Time: time.Now(), Added: added, Kind: p.kind, Prefix: netip.PrefixFrom(p.addr, p.addr.BitLen())})
		}
	})
	return nil
}

// record appends events and wakes WaitFor.
func (w *RouteWatch) record(evs ...RouteEvent) {
	if len(evs) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, evs...)
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *RouteWatch) setErr(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

// Events returns every change recorded so far.
func (w *RouteWatch) Events() ([]RouteEvent, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]RouteEvent(nil), w.events...), w.err
}

// WaitFor waits until a recorded event (past or future) satisfies match.
func (w *RouteWatch) WaitFor(ctx context.Context, timeout time.Duration, match func(RouteEvent) bool) (RouteEvent, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	seen := 0
	for {
		w.mu.Lock()
		evs, err, changed := w.events[seen:], w.err, w.changed
		seen = len(w.events)
		w.mu.Unlock()
		for _, ev := range evs {
			if match(ev) {
				return ev, nil
			}
		}
		if err != nil {
			return RouteEvent{}, fmt.Errorf("route watch in %s: %w", w.NetNS, err)
		}
		select {
		case <-changed:
		case <-t.C:
			return RouteEvent{}, fmt.Errorf("route watch in %s: no matching change within %s", w.NetNS, timeout)
		case <-ctx.Done():
			return RouteEvent{}, ctx.Err()
		}
	}
}

// Close stops the watch.
func (w *RouteWatch) Close() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.wg.Wait()
}
