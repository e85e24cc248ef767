package testutils

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/podmesh/podmesh/internal/netnsutil"
)

// NetNS is a named network namespace owned by one test.
type NetNS struct {
	// Name is the namespace's name under /var/run/netns.
	Name string
	// Handle stays open until the test ends.
	Handle netns.NsHandle
}

// Path returns the namespace's bind-mount path.
func (n *NetNS) Path() string { return "/var/run/netns/" + n.Name }

// Do runs fn on a locked OS thread inside the namespace.
func (n *NetNS) Do(fn func() error) error { return netnsutil.Do(n.Handle, fn) }

// NewNetNS creates a named network namespace "pmt-<prefix>-<random>" without
// moving the calling goroutine into it, and deletes it when tb ends (also
// when the test fails).
func NewNetNS(tb testing.TB, prefix string) *NetNS {
	tb.Helper()
	name := "pmt-" + prefix + "-" + RandomSuffix()
	if len(name) > 60 {
		name = name[:60]
	}
	var h netns.NsHandle
	err := netnsutil.OnLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return fmt.Errorf("current netns: %w", err)
		}
		defer orig.Close()
		// NewNamed moves the calling thread into the new namespace.
		h, err = netns.NewNamed(name)
		if rerr := netns.Set(orig); rerr != nil {
			return errors.Join(err, fmt.Errorf("restore netns: %w", rerr))
		}
		return err
	})
	if err != nil {
		tb.Fatalf("create netns %s: %v", name, err)
	}
	ns := &NetNS{Name: name, Handle: h}
	tb.Cleanup(func() {
		ns.Handle.Close()
		if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			tb.Errorf("delete netns %s: %v", name, err)
		}
	})
	return ns
}

// RandomSuffix returns 8 random hex digits for names that must not collide
// between concurrent test runs.
func RandomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
