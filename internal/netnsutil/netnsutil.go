// Package netnsutil runs code on an OS thread switched into another network
// namespace, for the datapath, the bpf tests and the test harnesses.
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
//
// The thread goes back to the pool whenever its original namespace was
// restored, also when fn failed; it is discarded only when the restore
// fails. That matters beyond tidiness: a child process started with
// Pdeathsig is killed when the thread that forked it exits, so discarding
// healthy threads (say, after every refused dial) kills unrelated children.
func Do(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Still locked: the runtime discards the thread with the goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// OnLockedThread runs fn on a fresh goroutine locked to its OS thread and
// waits for it. The thread is unlocked (and reused) only when fn succeeds,
// so fn must return nil whenever it left the thread in its original
// namespace; see Do for why discarding threads needlessly is harmful.
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

// DoPath is Do for the namespace bound at path (e.g. /var/run/netns/NAME).
func DoPath(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	return Do(ns, fn)
}
