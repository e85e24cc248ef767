package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/bpf"
)

// TunnelState is what the kernel of one node holds on podmesh_vxlan: the
// device's link-layer facts and its neighbour (IPv4 and IPv6) and FDB
// entries, read from the kernel, not from the agent.
type TunnelState struct {
	// Exists is false when the node has no podmesh_vxlan (then nothing
	// else is set).
	Exists bool
	NoARP  bool
	MAC    string
	Neigh  []TunnelNeigh
	FDB    []TunnelFDB
}

// TunnelNeigh is one neighbour entry on podmesh_vxlan.
type TunnelNeigh struct {
	IP    netip.Addr
	MAC   string
	State int // NUD_* bits
}

// TunnelFDB is one forwarding-database entry on podmesh_vxlan: frames for
// MAC go to the underlay address Dst.
type TunnelFDB struct {
	MAC   string
	Dst   netip.Addr
	State int
}

func (n TunnelNeigh) String() string {
	return fmt.Sprintf("neigh %s lladdr %s %s", n.IP, n.MAC, nudString(n.State))
}

func (f TunnelFDB) String() string {
	return fmt.Sprintf("fdb %s dst %s %s", f.MAC, f.Dst, nudString(f.State))
}

func nudString(s int) string {
	switch {
	case s&netlink.NUD_PERMANENT != 0:
		return "permanent"
	case s&netlink.NUD_NOARP != 0:
		return "noarp"
	}
	return fmt.Sprintf("state %#x", s)
}

// ReadTunnelState reads podmesh_vxlan's neighbour and FDB entries in the
// named namespace (dumps interrupted by a concurrent change are retried).
func ReadTunnelState(netnsName string) (TunnelState, error) {
	var st TunnelState
	h, err := netlinkIn(netnsName)
	if err != nil {
		return st, err
	}
	defer h.Close()
	link, err := h.LinkByName(TunnelDevice)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("find %s in %s: %w", TunnelDevice, netnsName, err)
	}
	a := link.Attrs()
	st.Exists, st.NoARP, st.MAC = true, a.RawFlags&unix.IFF_NOARP != 0, a.HardwareAddr.String()
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6, unix.AF_BRIDGE} {
		list, err := dumpRetry(func() ([]netlink.Neigh, error) { return h.NeighList(a.Index, fam) })
		if err != nil {
			return st, fmt.Errorf("list %s entries of %s in %s: %w", familyName(fam), TunnelDevice, netnsName, err)
		}
		for _, n := range list {
			ip, _ := netip.AddrFromSlice(n.IP)
			if fam == unix.AF_BRIDGE {
				st.FDB = append(st.FDB, TunnelFDB{MAC: n.HardwareAddr.String(), Dst: ip.Unmap(), State: n.State})
				continue
			}
			st.Neigh = append(st.Neigh, TunnelNeigh{IP: ip.Unmap(), MAC: n.HardwareAddr.String(), State: n.State})
		}
	}
	return st, nil
}

func familyName(fam int) string {
	switch fam {
	case unix.AF_INET:
		return "IPv4 neighbour"
	case unix.AF_INET6:
		return "IPv6 neighbour"
	}
	return "FDB"
}

// Peers is the part of st podmesh programs in vxlan mode: the permanent
// neighbour entries (gateway -> MAC) and the permanent FDB entries to a
// unicast MAC (MAC -> underlay endpoint); the kernel's own entries
// (all-zero default, multicast) are not peers.
func (st TunnelState) Peers() TunnelPeers {
	out := TunnelPeers{Neigh: map[netip.Addr]string{}, FDB: map[string]netip.Addr{}}
	for _, n := range st.Neigh {
		if n.State&netlink.NUD_PERMANENT != 0 {
			out.Neigh[n.IP] = n.MAC
		}
	}
	for _, f := range st.FDB {
		mac, err := net.ParseMAC(f.MAC)
		if err == nil && len(mac) == 6 && mac[0]&1 == 0 && f.MAC != "00:00:00:00:00:00" && f.State&netlink.NUD_PERMANENT != 0 {
			out.FDB[f.MAC] = f.Dst
		}
	}
	return out
}

// CheckTunnelNeighbours compares node n's neighbour and FDB entries on
// podmesh_vxlan with what its agent's desired state implies for the given
// remotes, and reports every missing, stale or unexpected entry (nil when
// equal):
//
//   - ebpf: the agent programs no entry. The device is NOARP and carries
//     the mesh-wide bpf.DeviceMAC; the kernel resolves every next hop on
//     it to that MAC by itself (NOARP state). So the FDB must be empty and
//     every neighbour entry must be a NOARP one, a unicast one with the
//     device's MAC: a permanent, learnt or stale entry is not podmesh's
//     desired state.
//   - vxlan: exactly one permanent FDB entry per tunnel endpoint
//     (TunnelMAC(endpoint) dst endpoint) and one permanent neighbour entry
//     per gateway (the endpoint itself for IPv4 over IPv4) resolving to the
//     endpoint's TunnelMAC; no other permanent or learnt entry.
//   - native: no podmesh_vxlan at all.
func (l *Lab) CheckTunnelNeighbours(ctx context.Context, n *Node, remotes []*Cluster) error {
	hosts, err := l.hostPrefixes(ctx, remotes)
	if err != nil {
		return err
	}
	st, err := ReadTunnelState(n.NetNS)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if diff := compareTunnel(n.Mode, st, expectedPrefixes(remotes, hosts)); len(diff) > 0 {
		return fmt.Errorf("node %s (%s mode): %s neighbour/FDB entries differ from the desired state: %v", n.Name, n.Mode, TunnelDevice, diff)
	}
	return nil
}

// WaitTunnelNeighbours polls CheckTunnelNeighbours on every node until all
// hold or timeout passes (in vxlan mode an entry a withdrawn prefix no
// longer needs goes with the agent's next full pass).
func (l *Lab) WaitTunnelNeighbours(ctx context.Context, timeout time.Duration) error {
	nodes := l.Nodes()
	return waitFor(ctx, timeout, time.Second, "neighbour/FDB entries", func() (bool, error) {
		var errs []error
		for _, n := range nodes {
			errs = append(errs, l.CheckTunnelNeighbours(ctx, n, l.Remotes(n)))
		}
		err := errors.Join(errs...)
		return err == nil, err
	})
}

// compareTunnel lists how st differs from what mode programs for the
// desired prefixes want (prefix -> tunnel endpoint).
func compareTunnel(mode string, st TunnelState, want map[netip.Prefix]netip.Addr) []string {
	var diff []string
	switch mode {
	case ModeNative:
		if st.Exists {
			diff = append(diff, "native mode has a "+TunnelDevice)
		}
		return diff
	case ModeEBPF, ModeVXLAN:
	default:
		return []string{"unknown routing mode " + mode}
	}
	if !st.Exists {
		if len(want) > 0 {
			diff = append(diff, fmt.Sprintf("no %s for %d desired prefixes", TunnelDevice, len(want)))
		}
		return diff
	}
	var wantNeigh map[netip.Addr]string // gateway -> MAC
	var wantFDB map[string]netip.Addr   // MAC -> endpoint
	if mode == ModeEBPF {
		if !st.NoARP {
			diff = append(diff, "device is not NOARP")
		}
		if st.MAC != bpf.DeviceMAC {
			diff = append(diff, fmt.Sprintf("device MAC %s, want the mesh-wide %s", st.MAC, bpf.DeviceMAC))
		}
	} else {
		var bad []string
		wantNeigh, wantFDB, bad = tunnelPeersWanted(want)
		diff = append(diff, bad...)
	}
	for _, n := range st.Neigh {
		switch {
		case n.State&netlink.NUD_PERMANENT != 0:
			if mac, ok := wantNeigh[n.IP]; ok && mac == n.MAC {
				delete(wantNeigh, n.IP)
				continue
			}
			diff = append(diff, "stale "+n.String())
		case n.State&netlink.NUD_NOARP != 0:
			// The kernel's own resolution: multicast to its mapped MAC,
			// unicast (NOARP device) to the device's MAC.
			if !n.IP.IsMulticast() && n.MAC != st.MAC {
				diff = append(diff, "noarp entry not on the device's MAC: "+n.String())
			}
		default:
			diff = append(diff, "unexpected "+n.String())
		}
	}
	for gw, mac := range wantNeigh {
		diff = append(diff, fmt.Sprintf("missing neigh %s lladdr %s permanent", gw, mac))
	}
	for _, f := range st.FDB {
		if ep, ok := wantFDB[f.MAC]; ok && ep == f.Dst && f.State&netlink.NUD_PERMANENT != 0 {
			delete(wantFDB, f.MAC)
			continue
		}
		diff = append(diff, "stale "+f.String())
	}
	for mac, ep := range wantFDB {
		diff = append(diff, fmt.Sprintf("missing fdb %s dst %s permanent", mac, ep))
	}
	sort.Strings(diff)
	return slices.Compact(diff)
}
