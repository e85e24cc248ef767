package bpf

import (
	"errors"
	"fmt"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attachClsLocked hooks the program with a cls_bpf filter in direct-action
// mode on the egress side of the device's clsact qdisc, for kernels without
// TCX. The filter keeps the program alive, so nothing needs to be pinned;
// replacing the filter (same priority and handle) is atomic.
func (d *Datapath) attachClsLocked(ifindex int) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	// The clsact qdisc may be shared with others; it is added if missing
	// and never removed.
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Handle:    clsHandle,
			Priority:  clsPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           d.objs.PodmeshEgress.FD(),
		Name:         clsFilterName,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("replace cls_bpf filter on ifindex %d: %w", ifindex, err)
	}
	d.log.WithFields(logrus.Fields{"ifindex": ifindex}).Info("Attached cls_bpf filter")
	return nil
}

// findClsFilter returns podmesh's cls_bpf filter on the egress side of the
// device, or nil if there is none (also when the device has no clsact).
func findClsFilter(ifindex int) (*netlink.BpfFilter, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("find link %d: %w", ifindex, err)
	}
	filters, err := netlink.FilterList(l, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil // no clsact qdisc
		}
		return nil, fmt.Errorf("list egress filters of ifindex %d: %w", ifindex, err)
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if ok && bf.Priority == clsPriority && bf.Handle == clsHandle && bf.Name == clsFilterName {
			return bf, nil
		}
	}
	return nil, nil
}

// removeClsFilter deletes podmesh's cls_bpf filter from the device; a
// missing filter or device is not an error.
func removeClsFilter(ifindex int) error {
	f, err := findClsFilter(ifindex)
	var lnf netlink.LinkNotFoundError
	if errors.As(err, &lnf) {
		return nil
	}
	if err != nil || f == nil {
		return err
	}
	if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete cls_bpf filter on ifindex %d: %w", ifindex, err)
	}
	return nil
}
