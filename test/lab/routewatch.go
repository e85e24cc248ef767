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
// the time the lab received the kernel's notification.
type RouteEvent struct {
	Time   time.Time
	Added  bool
	Prefix netip.Prefix
}

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
			ev := RouteEvent{Time: time.Now(), Added: u.Type == unix.RTM_NEWROUTE, Prefix: netip.PrefixFrom(addr.Unmap(), bits)}
			w.mu.Lock()
			w.events = append(w.events, ev)
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
	})
	return w, nil
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
