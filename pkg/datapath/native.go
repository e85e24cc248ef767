package datapath

import (
	"net/netip"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
)

// backend is what the reconciler drives; each routing mode implements it.
// sync is level-triggered and idempotent: it reads the kernel, programs what
// is missing or different in want (adds and changes first), then removes
// podmesh objects that are not in want and that canDelete allows. Objects
// podmesh did not create are never touched.
type backend interface {
	mode() string
	sync(want map[netip.Prefix]Entry, canDelete func(netip.Prefix) bool) syncResult
	// apply programs a delta on top of the last fully successful pass
	// without re-reading the kernel. It sets needFull when it cannot (state
	// it relies on is missing, or a foreign object is in the way).
	apply(d delta) syncResult
	// traffic returns per-remote-cluster tx counters and drop counters by
	// reason; nil maps when the mode has none.
	traffic() (tx map[uint32]Counter, drops map[string]Counter, err error)
	// underlayMTU and setUnderlayMTU read and change the underlay MTU the
	// routes and the device are derived from.
	underlayMTU() int
	setUnderlayMTU(mtu int)
	close() error
}

// syncResult is the outcome of one backend sync.
type syncResult struct {
	failed  map[netip.Prefix]error // per-prefix failures
	removed []netip.Prefix         // podmesh objects removed
	writes  int                    // kernel objects written or deleted (0: nothing had to change)
	err     error                  // a failure not tied to one prefix: nothing counts as programmed
	// needFull asks for a full pass (apply only).
	needFull bool
}

// base holds what every backend shares.
type base struct {
	h     *netlink.Handle
	ns    nsRunner
	log   logrus.FieldLogger
	local netip.Addr
	port  int
	mtu   int // underlay MTU
}

func (b *base) underlayMTU() int       { return b.mtu }
func (b *base) setUnderlayMTU(mtu int) { b.mtu = mtu }

// nativeBackend routes remote prefixes straight to the remote node's address:
// "<prefix> via <node IP> proto podmesh mtu <underlay MTU>".
type nativeBackend struct {
	base
}

func (b *nativeBackend) mode() string { return ModeNative }

func (b *nativeBackend) sync(want map[netip.Prefix]Entry, canDelete func(netip.Prefix) bool) syncResult {
	ours, foreign, err := listRoutes(b.h)
	if err != nil {
		return syncResult{err: err}
	}
	rp := routeParams{mode: ModeNative, mtu: routeMTU(ModeNative, b.mtu, b.local)}
	spec := func(e Entry) routeSpec { return specFor(e, rp) }
	failed, removed, writes := applyRoutes(b.h, planRoutes(want, spec, ours, foreign, canDelete))
	return syncResult{failed: failed, removed: removed, writes: writes}
}

func (b *nativeBackend) apply(d delta) syncResult {
	rp := routeParams{mode: ModeNative, mtu: routeMTU(ModeNative, b.mtu, b.local)}
	failed, removed, writes, needFull := applyRouteDelta(b.h, d, func(e Entry) netlink.Route { return desiredRoute(e, rp) })
	return syncResult{failed: failed, removed: removed, writes: writes, needFull: needFull}
}

func (b *nativeBackend) traffic() (map[uint32]Counter, map[string]Counter, error) {
	return nil, nil, nil
}

func (b *nativeBackend) close() error { return nil }
