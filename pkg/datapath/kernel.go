package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/internal/netnsutil"
)

// This file is the thin kernel edge shared by the backends: netlink dumps
// that retry on an interrupted dump, deletes that treat "already gone" as
// success, and running a function inside the target network namespace.

const dumpRetries = 5

// retryDump calls f until it returns something other than
// netlink.ErrDumpInterrupted (the kernel's table changed during the dump; the
// result may be inconsistent and must not drive a prune).
func retryDump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpRetries {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// isGone reports whether a delete failed only because the object is already
// absent, which podmesh treats as success.
func isGone(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) || errors.As(err, &lnf)
}

// isLinkNotFound reports whether a link lookup failed because the link is absent.
func isLinkNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV)
}

// listRoutes dumps the routes of podmesh's table for both families and splits
// them into podmesh's own (tagged with RouteProtocol) and foreign ones.
func listRoutes(rb *routeBatcher) (ours, foreign map[netip.Prefix]netlink.Route, err error) {
	v, err := readRoutes(rb)
	if err != nil {
		return nil, nil, err
	}
	v.index()
	return v.ours, v.foreign, nil
}

// dumpTable dumps the routes of podmesh's table for both families. It
// retries a dump the kernel reports interrupted: an inconsistent read must
// not drive a prune. sizeHint is the size of the last dump.
func dumpTable(rb *routeBatcher, sizeHint int) ([]kernelRoute, error) {
	var (
		rs  []kernelRoute
		err error
	)
	for range dumpRetries {
		rs, err = rb.dumpRoutes(routeTable, make([]kernelRoute, 0, sizeHint+sizeHint/8))
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return rs, nil
}

// linkMTUFor returns the MTU of the link holding addr.
func linkMTUFor(h *netlink.Handle, addr netip.Addr) (int, error) {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, family(addr)) })
	if err != nil {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ipToAddr(a.IP) != addr {
			continue
		}
		l, err := h.LinkByIndex(a.LinkIndex)
		if err != nil {
			return 0, fmt.Errorf("find link of %s: %w", addr, err)
		}
		return l.Attrs().MTU, nil
	}
	return 0, fmt.Errorf("no link holds %s", addr)
}

// nsRunner runs functions inside one network namespace. Netlink handles bind
// to the namespace themselves; what needs the calling thread inside it
// (AttachTCX resolves ifindexes there, /proc/sys/net shows that namespace's
// sysctls) goes through do.
type nsRunner struct {
	ns netns.NsHandle // closed handle (-1): the process's current namespace
}

func (n nsRunner) do(fn func() error) error {
	if !n.ns.IsOpen() {
		return fn()
	}
	return netnsutil.Do(n.ns, fn)
}

// sysctl reads and writes /proc/sys entries (of the namespace the calling
// thread is in).
func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile(sysctlPath(name), []byte(value), 0o644); err != nil {
		return fmt.Errorf("write sysctl %s: %w", name, err)
	}
	return nil
}

func sysctlPath(name string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}

func sortPrefixes(ps []netip.Prefix) { slices.SortFunc(ps, netip.Prefix.Compare) }
