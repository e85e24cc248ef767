// Package netnsutil runs code on an OS thread switched into another network
// namespace, for the datapath and its test helpers.
//
// A goroutine that changes its thread's namespace must keep the thread
// locked while it is switched and may only unlock it once the original
// namespace is restored. Do runs the function on a fresh goroutine for that
// reason: when anything fails, the goroutine exits with its thread still
// locked and the Go runtime discards the thread instead of reusing it in the
// wrong namespace.
package netnsutil

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a thread inside ns and returns fn's error. Sockets fn opens
// stay in ns after Do returns; netlink handles bound to ns do not need Do.
func Do(ns netns.NsHandle, fn func() error) error {
	return OnLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns: %w", err)
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
		}
		return ferr
	})
}

// OnLockedThread runs fn on a fresh goroutine locked to its OS thread and
// waits for it. The thread is unlocked (and reused) only when fn succeeds.
func OnLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if err == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
