// Command pause is the lab's pod sandbox image (podmesh.local/pause:1): the
// first process of every pod, which holds the pod's namespaces open. It does
// nothing but wait: it exits 0 on SIGTERM or SIGINT and, as PID 1 of the
// pod's PID namespace when the namespace is shared, reaps every child that
// exits (SIGCHLD), so no zombie outlives its parent.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	s := waitForStop(sigs, reap)
	fmt.Fprintf(os.Stderr, "pause: stopping on %v\n", s)
}

// waitForStop reaps on every SIGCHLD and returns the first other signal.
func waitForStop(sigs <-chan os.Signal, reap func() []int) os.Signal {
	for s := range sigs {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		return s
	}
	return nil
}

// reap collects every child that has exited, without blocking, and returns
// their PIDs. Signals coalesce, so one SIGCHLD may stand for many children.
func reap() []int {
	var pids []int
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return pids
		}
		pids = append(pids, pid)
	}
}
