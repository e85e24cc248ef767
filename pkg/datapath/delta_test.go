package datapath

import "net/netip"

// diffDesired computes the delta from prev to next. Entries compare on what
// reaches the kernel (prefix, endpoint, cluster ID), not the cluster name. The
// reconciler builds its deltas from Desired.ChangesSince; tests build them
// from two sets.
func diffDesired(prev, next map[netip.Prefix]Entry) delta {
	d := delta{want: next}
	for p, e := range next {
		old, ok := prev[p]
		switch {
		case !ok:
			d.add = append(d.add, e)
		case old.TunnelEndpoint != e.TunnelEndpoint || old.ClusterID != e.ClusterID:
			d.change = append(d.change, e)
			d.stale = append(d.stale, old)
		}
	}
	for p, e := range prev {
		if _, ok := next[p]; !ok {
			d.remove = append(d.remove, e)
		}
	}
	return d
}
