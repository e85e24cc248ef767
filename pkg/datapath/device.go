package datapath

import (
	"errors"
	"fmt"
	"net"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file holds the tunnel device code the vxlan and ebpf modes share.

// ensureDevice makes podmesh's tunnel device exist, match want and be up.
// compatible decides whether an existing device can be fixed in place (MTU,
// MAC, NOARP, up) or must be recreated. A device with podmesh's name is
// podmesh's, so recreating it touches nothing foreign.
func ensureDevice(h *netlink.Handle, log logrus.FieldLogger, want netlink.Link, compatible func(netlink.Link) bool, noarp bool) (netlink.Link, error) {
	name := want.Attrs().Name
	l, err := h.LinkByName(name)
	switch {
	case err != nil && !isLinkNotFound(err):
		return nil, fmt.Errorf("find %s: %w", name, err)
	case err == nil && !compatible(l):
		log.WithField("device", name).Info("Recreating tunnel device whose configuration does not match")
		if err := h.LinkDel(l); err != nil && !isGone(err) {
			return nil, fmt.Errorf("delete %s: %w", name, err)
		}
		l = nil
	case err != nil:
		l = nil
	}
	if l == nil {
		if err := h.LinkAdd(want); err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
		log.WithField("device", name).Info("Created tunnel device")
		if l, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("find %s after create: %w", name, err)
		}
	}
	var errs []error
	a := l.Attrs()
	if a.MTU != want.Attrs().MTU {
		if err := h.LinkSetMTU(l, want.Attrs().MTU); err != nil {
			errs = append(errs, fmt.Errorf("set mtu of %s: %w", name, err))
		}
	}
	if mac := want.Attrs().HardwareAddr; mac != nil && a.HardwareAddr.String() != mac.String() {
		if err := h.LinkSetHardwareAddr(l, mac); err != nil {
			errs = append(errs, fmt.Errorf("set mac of %s: %w", name, err))
		}
	}
	if noarp && a.RawFlags&unix.IFF_NOARP == 0 {
		if err := h.LinkSetARPOff(l); err != nil {
			errs = append(errs, fmt.Errorf("set noarp on %s: %w", name, err))
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(l); err != nil {
			if vx, ok := want.(*netlink.Vxlan); ok && errors.Is(err, unix.EADDRINUSE) {
				err = fmt.Errorf("UDP port %d is taken, by another VXLAN device with other flags or a socket (choose another tunnel port): %w", vx.Port, err)
			}
			errs = append(errs, fmt.Errorf("set %s up: %w", name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return l, nil
}
