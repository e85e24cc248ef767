package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/test/kubetest"
)

// addNetNS creates a named network namespace (as `ip netns add` does: a
// bind mount under /var/run/netns) and brings its loopback up.
func addNetNS(ctx context.Context, name string) error {
	if err := run(ctx, "ip", "netns", "add", name); err != nil {
		return err
	}
	return ipBatch(ctx, name, "link set lo up")
}

// delNetNS removes a named namespace. A missing one is not an error.
func delNetNS(name string) error {
	path := NetNSPath(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// listNetNS returns the names of every named namespace.
func listNetNS() ([]string, error) {
	ents, err := os.ReadDir(NetNSDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", NetNSDir, err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// ipBatch runs ip commands (one per line, without the leading "ip") inside
// the named namespace. The namespace is mandatory: the lab never runs ip
// against the host namespace.
func ipBatch(ctx context.Context, netns string, lines ...string) error {
	if netns == "" {
		return errors.New("ip batch: no namespace")
	}
	cmd := exec.CommandContext(ctx, "ip", "-n", netns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip -n %s: %w: %s", netns, err, strings.TrimSpace(out.String()))
	}
	return nil
}

func run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// output runs a command inside a lab namespace and returns its stdout.
func output(ctx context.Context, netns string, argv ...string) ([]byte, error) {
	full := append([]string{"nsenter", "--net=" + NetNSPath(netns), "--"}, argv...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), netns, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// setSysctl writes a net.* sysctl inside a namespace. /proc/sys/net shows
// the namespace of the thread that opens it, so this is done in-process on
// a thread that has entered the namespace.
func setSysctl(netns, key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return kubetest.InNetNS(NetNSPath(netns), func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("set %s=%s in %s: %w", key, value, netns, err)
		}
		return nil
	})
}

// DialIn opens a connection from inside a lab namespace.
func DialIn(ctx context.Context, netns, network, addr string) (net.Conn, error) {
	return kubetest.DialInNetNS(NetNSPath(netns))(ctx, network, addr)
}

// ListenPacketIn opens a packet socket bound inside a lab namespace.
func ListenPacketIn(netns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := kubetest.InNetNS(NetNSPath(netns), func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, netns, err)
	}
	return pc, nil
}

// ListenIn opens a stream listener inside a lab namespace.
func ListenIn(netns, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := kubetest.InNetNS(NetNSPath(netns), func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, netns, err)
	}
	return l, nil
}

// permanent marks a condition error that waiting cannot cure (a process
// exited): waitFor returns it at once.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// waitFor polls cond until it reports true, the deadline passes or ctx ends.
// It is how the lab and its tests wait for a condition (never a bare sleep).
func waitFor(ctx context.Context, timeout, every time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(every)
	defer t.Stop()
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if p := (permanent{}); errors.As(err, &p) {
			return fmt.Errorf("wait for %s: %w", what, p.error)
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("wait for %s: %w (last error: %v)", what, ctx.Err(), last)
			}
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

// ResolverIn is a DNS resolver that queries dns:53 from inside the lab
// namespace netns (a pod's), as that pod would.
func ResolverIn(netns string, dns netip.Addr) *net.Resolver {
	server := netip.AddrPortFrom(dns, 53).String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return DialIn(ctx, netns, network, server)
	}}
}

// LookupIn resolves name's IPv4 addresses (sorted) from inside netns through
// the DNS server dns.
func LookupIn(ctx context.Context, netns string, dns netip.Addr, name string) ([]netip.Addr, error) {
	ips, err := ResolverIn(netns, dns).LookupNetIP(ctx, "ip4", name+".")
	if err != nil {
		return nil, err
	}
	for k := range ips {
		ips[k] = ips[k].Unmap()
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips, nil
}
