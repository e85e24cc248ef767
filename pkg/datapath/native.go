package datapath

import "net/netip"

// nativeBackend routes remote prefixes straight to the remote node's address:
// "<prefix> via <node IP> proto podmesh mtu <underlay MTU>". Its objects are
// routes, one per prefix.
type nativeBackend struct {
	base
}

func (b *nativeBackend) mode() string { return ModeNative }

func (b *nativeBackend) spec(e Entry) routeSpec {
	return specFor(e, routeParams{mode: ModeNative, mtu: routeMTU(ModeNative, b.mtu, b.local)})
}

func (b *nativeBackend) setup() error { return nil }

func (b *nativeBackend) read(map[netip.Prefix]Entry, uint64) (kernelView, error) {
	return readRoutes(b.rb)
}

func (b *nativeBackend) update(v kernelView, want map[netip.Prefix]Entry, _ uint64) (int, map[netip.Prefix]error) {
	return updateRoutes(b.rb, v.(*routeView), want, b.spec)
}

func (b *nativeBackend) write(objs []Entry, _ uint64, ours func(netip.Prefix) bool) (int, map[netip.Prefix]error) {
	return writeRoutes(b.rb, objs, b.spec, ours)
}

func (b *nativeBackend) delete(es []Entry) map[netip.Prefix]error {
	return deleteRoutes(b.rb, specRoutes(es, b.spec))
}

func (b *nativeBackend) prune(v kernelView, want map[netip.Prefix]Entry, allowed bool) (int, error) {
	if !allowed {
		return 0, nil
	}
	return pruneRoutes(b.rb, v.(*routeView), want)
}
