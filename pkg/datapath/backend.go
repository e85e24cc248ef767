package datapath

import (
	"net/netip"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
)

// backend is one routing mode's kernel operations, in the shape of
// cilium/statedb's reconciler operations. The reconciler drives every mode
// through it alike:
//
//   - incremental pass: write(changed objects), delete(withdrawn
//     objects);
//   - full pass: v := read(every object); update(v, every object);
//     prune(v, every object).
//
// A kernelView is what read found in the kernel, used by one pass and then
// dropped: no backend keeps a copy of kernel state between passes.
type backend interface {
	mode() string
	// setup makes the objects every prefix shares exist and match (the
	// tunnel device, the program). An error fails every object of the pass.
	setup() error
	// clusterRoutes converges the routes to the remote clusters' pod CIDRs
	// (ebpf mode; the other modes route per prefix and have none). A CIDR
	// this backend routed and that is no longer wanted loses its route;
	// with prune, so does every other podmesh route not to a wanted CIDR.
	// It returns how many routes it wrote or removed.
	clusterRoutes(cidrs []netip.Prefix, prune bool) (written int, err error)
	// read dumps podmesh's objects (and the foreign routes in its way) for
	// a full pass over want. gen names want's content (see update); a
	// backend that compares the kernel with something it derives from
	// want may derive it while it reads.
	read(want map[netip.Prefix]Entry, gen uint64) (kernelView, error)
	// update realises want, every valid desired object, against a full
	// pass's read v: objects the view shows in place are not written, a
	// prefix a foreign route holds is reported failed and left alone. It
	// is idempotent. gen names want's content: it moves whenever the valid
	// desired set changes, so a backend may keep what it derives from the
	// set (never what it read from the kernel) and reuse it while gen
	// stays. It returns the number of objects it wrote and the per-prefix
	// failures; one failing object does not stop the others.
	update(v kernelView, want map[netip.Prefix]Entry, gen uint64) (written int, failed map[netip.Prefix]error)
	// write realises the objects of an incremental pass (one per prefix,
	// in revision order) without reading the kernel: every object is
	// written; a route ours does not claim (new to this process) is added
	// exclusively, so a foreign route is never overwritten. gen is nonzero
	// when objs is the whole valid desired set (the pass that fills an
	// empty table) and names it as in update. Results as in update.
	write(objs []Entry, gen uint64, ours func(netip.Prefix) bool) (written int, failed map[netip.Prefix]error)
	// delete removes objects; one that is already gone is success.
	delete(es []Entry) (failed map[netip.Prefix]error)
	// prune removes the podmesh-owned objects in v that want does not hold,
	// and nothing else; it returns how many it removed. Until allowed (the
	// desired set's AllowPrune), it removes only objects nothing can use any
	// more (a vxlan neighbour entry no route leads to).
	prune(v kernelView, want map[netip.Prefix]Entry, allowed bool) (removed int, err error)
	// traffic returns per-remote-cluster tx counters and drop counters by
	// reason; nil maps when the mode has none.
	traffic() (tx map[uint32]Counter, drops map[string]Counter, err error)
	// underlayMTU and setUnderlayMTU read and change the underlay MTU the
	// routes and the device are derived from.
	underlayMTU() int
	setUnderlayMTU(mtu int)
	close() error
}

// byPrefix indexes objects by prefix.
func byPrefix(objs []Entry) map[netip.Prefix]Entry {
	m := make(map[netip.Prefix]Entry, len(objs))
	for _, e := range objs {
		m[e.Prefix] = e
	}
	return m
}

// kernelView is a backend's read of the kernel; only that backend looks
// inside.
type kernelView any

// base holds what every backend shares.
type base struct {
	h     *netlink.Handle
	rb    *routeBatcher // routes go through it, many to a system call
	ns    nsRunner
	log   logrus.FieldLogger
	local netip.Addr
	port  int
	mtu   int // underlay MTU
}

func (b *base) underlayMTU() int       { return b.mtu }
func (b *base) setUnderlayMTU(mtu int) { b.mtu = mtu }

func (b *base) traffic() (map[uint32]Counter, map[string]Counter, error) { return nil, nil, nil }

func (b *base) close() error { return nil }

func (b *base) clusterRoutes([]netip.Prefix, bool) (int, error) { return 0, nil }
