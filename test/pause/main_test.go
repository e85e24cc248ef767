package main

import (
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWaitForStopReapsOnSIGCHLDAndReturnsOnSIGTERM(t *testing.T) {
	sigs := make(chan os.Signal, 4)
	sigs <- syscall.SIGCHLD
	sigs <- syscall.SIGCHLD
	sigs <- syscall.SIGTERM
	sigs <- syscall.SIGCHLD
	reaped := 0
	got := waitForStop(sigs, func() []int { reaped++; return nil })
	require.Equal(t, syscall.SIGTERM, got)
	require.Equal(t, 2, reaped, "one reap per SIGCHLD before the stop signal, none after")
}

func TestReapCollectsExitedChildren(t *testing.T) {
	chld := make(chan os.Signal, 4)
	signal.Notify(chld, syscall.SIGCHLD)
	defer signal.Stop(chld)

	truePath := "/bin/true"
	_, err := os.Stat(truePath)
	require.NoError(t, err)
	// Fork without os/exec, which would wait for the child itself.
	pid, err := syscall.ForkExec(truePath, []string{"true"}, &syscall.ProcAttr{})
	require.NoError(t, err)
	var pids []int
	for len(pids) == 0 {
		<-chld // the child has exited; it is a zombie until reaped
		pids = append(pids, reap()...)
	}
	require.Equal(t, []int{pid}, pids)
	_, err = syscall.Wait4(pid, nil, syscall.WNOHANG, nil)
	require.ErrorIs(t, err, syscall.ECHILD, "the child is gone, not a zombie")
}
