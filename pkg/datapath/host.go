package datapath

import (
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"os"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/podmesh/podmesh/bpf"
)

// This file holds what the reconciler keeps right on the node besides the
// desired objects: forwarding sysctls, the underlay MTU it follows, and the
// leftovers of another routing mode.

// nsSysctl reads a sysctl in the reconciler's namespace and, when set is
// not empty and differs, writes it; it returns the value found.
func (r *Reconciler) nsSysctl(name, set string) (string, error) {
	var v string
	err := r.ns.do(func() error {
		var err error
		if v, err = readSysctl(name); err != nil || set == "" || v == set {
			return err
		}
		return writeSysctl(name, set)
	})
	return v, err
}

// followUnderlayMTU re-reads the MTU of the link holding LocalIP; when it
// changed, the full pass that follows rewrites the device and route MTUs.
func (r *Reconciler) followUnderlayMTU() {
	mtu, err := linkMTUFor(r.h, r.cfg.LocalIP)
	if err != nil {
		r.log.WithError(err).Warn("Cannot re-read the underlay MTU; keeping the last one")
		return
	}
	if old := r.b.underlayMTU(); mtu != old && mtu >= 576+encapOverhead(r.cfg.LocalIP) {
		r.log.WithFields(logrus.Fields{"was": old, "now": mtu}).Info("Underlay MTU changed; updating tunnel and route MTUs")
		r.b.setUnderlayMTU(mtu)
	}
}

// removeLeftovers removes what another routing mode left behind (the agent
// ran in another mode before): the bpf pins under BPFRoot unless the mode is
// ebpf, and podmesh_vxlan in native mode. It runs once prune is allowed and a
// full pass has put this mode's routes in place, so a mode switch withdraws
// nothing the desired set still holds.
func (r *Reconciler) removeLeftovers() error {
	if r.leftoversDone {
		return nil
	}
	ifindex := 0
	if l, err := r.h.LinkByName(DeviceName); err == nil {
		ifindex = l.Attrs().Index
	} else if !isLinkNotFound(err) {
		return fmt.Errorf("find %s: %w", DeviceName, err)
	}
	var errs []error
	if r.cfg.Mode != ModeEBPF {
		if _, err := os.Stat(r.cfg.BPFRoot); err == nil {
			r.log.WithField("dir", r.cfg.BPFRoot).Info("Removing the ebpf datapath left by another routing mode")
			if err := r.ns.do(func() error { return bpf.Remove(r.cfg.BPFRoot, ifindex) }); err != nil {
				errs = append(errs, fmt.Errorf("remove bpf datapath under %s: %w", r.cfg.BPFRoot, err))
			}
		}
	}
	if r.cfg.Mode == ModeNative && ifindex != 0 {
		r.log.WithField("device", DeviceName).Info("Removing the tunnel device left by another routing mode")
		if err := r.h.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", DeviceName, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.leftoversDone = true
	return nil
}

// checkSysctls makes sure forwarding is on for every family the desired set
// uses, on every pass (so a setting turned off by hand comes back). It
// changes a setting only when it is off, and says so in the log. rp_filter
// needs no change: tunnel-mode routes point at podmesh_vxlan, where
// decapsulated return traffic arrives, and native routes at the underlay
// link, so strict reverse-path checks pass; its value is logged once.
func (r *Reconciler) checkSysctls(fam families) error {
	var need []string
	if fam&hasIPv4 != 0 {
		need = append(need, "net.ipv4.ip_forward")
	}
	if fam&hasIPv6 != 0 {
		need = append(need, "net.ipv6.conf.all.forwarding")
	}
	var errs []error
	for _, name := range need {
		v, err := r.sysctl(name, "")
		if err == nil && v != "1" {
			r.log.WithFields(logrus.Fields{"sysctl": name, "was": v}).Info("Enabling forwarding: remote pod traffic is routed through this node")
			_, err = r.sysctl(name, "1")
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if !r.rpFilterLogged && fam != 0 {
		r.rpFilterLogged = true
		if v, err := r.sysctl("net.ipv4.conf.all.rp_filter", ""); err == nil {
			r.log.WithField("rp_filter", v).Info("Remote prefix routes point at the device return traffic arrives on, so the reverse-path filter passes it")
		}
	}
	return errors.Join(errs...)
}

// families is a set of address families.
type families uint8

const (
	hasIPv4 families = 1 << iota
	hasIPv6
)

// prefixFamilies returns the families of the prefixes of m.
func prefixFamilies(m map[netip.Prefix]Entry) families {
	return familiesOf(maps.Keys(m))
}

// entryFamilies are the address families of es's prefixes.
func entryFamilies(es []Entry) families {
	return familiesOf(func(yield func(netip.Prefix) bool) {
		for _, e := range es {
			if !yield(e.Prefix) {
				return
			}
		}
	})
}

func familiesOf(ps iter.Seq[netip.Prefix]) families {
	var f families
	for p := range ps {
		if p.Addr().Is4() {
			f |= hasIPv4
		} else {
			f |= hasIPv6
		}
		if f == hasIPv4|hasIPv6 {
			break
		}
	}
	return f
}
