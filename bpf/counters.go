package bpf

import (
	"fmt"
)

// Counter is a packet and byte count. Bytes are inner frame bytes
// (Ethernet header included, VXLAN encapsulation not).
type Counter struct {
	Packets, Bytes uint64
}

// Drops counts the frames the program shot, by reason.
type Drops struct {
	// Miss: no ipcache entry covers the destination.
	Miss Counter
	// Malformed: neither IPv4 nor IPv6, or truncated headers.
	Malformed Counter
	// TunnelKey: setting the tunnel key or rewriting the MACs failed.
	TunnelKey Counter
	// NotConfigured: the config map was never written (a bug in the loader).
	NotConfigured Counter
}

// Counters returns the packets and bytes sent to each remote cluster since
// the counters map was created (it is pinned, so counts survive agent
// restarts), summed over CPUs. Clusters with no traffic are left out.
func (d *Datapath) Counters() (map[uint32]Counter, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	out := make(map[uint32]Counter)
	for id := uint32(1); id <= MaxClusterID; id++ {
		c, err := sumPerCPU(d.objs.PodmeshCounters, id)
		if err != nil {
			return nil, fmt.Errorf("read counters of cluster %d: %w", id, err)
		}
		if c != (Counter{}) {
			out[id] = c
		}
	}
	return out, nil
}

// Drops returns the frames the program dropped, by reason, summed over CPUs.
func (d *Datapath) Drops() (Drops, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Drops{}, ErrClosed
	}
	var out Drops
	for _, r := range []struct {
		reason podmeshPodmeshDropReason
		to     *Counter
	}{
		{podmeshPodmeshDropReasonPODMESH_DROP_MISS, &out.Miss},
		{podmeshPodmeshDropReasonPODMESH_DROP_MALFORMED, &out.Malformed},
		{podmeshPodmeshDropReasonPODMESH_DROP_TUNNEL_KEY, &out.TunnelKey},
		{podmeshPodmeshDropReasonPODMESH_DROP_NOT_CONFIGURED, &out.NotConfigured},
	} {
		c, err := sumPerCPU(d.objs.PodmeshDrops, uint32(r.reason))
		if err != nil {
			return Drops{}, fmt.Errorf("read drop counter %d: %w", r.reason, err)
		}
		*r.to = c
	}
	return out, nil
}

func sumPerCPU(m interface {
	Lookup(key, valueOut any) error
}, idx uint32) (Counter, error) {
	var perCPU []podmeshCounter
	if err := m.Lookup(idx, &perCPU); err != nil {
		return Counter{}, err
	}
	var c Counter
	for _, p := range perCPU {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
	}
	return c, nil
}
