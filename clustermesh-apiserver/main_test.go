package main

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
	"github.com/podmesh/podmesh/test/kubetest"
)

func TestRunExitsTwoOnBadFlags(t *testing.T) {
	cases := [][]string{
		nil,
		{"--cluster-name=east", "--cluster-id=0", "--pod-cidrs=10.1.0.0/16"},
		{"--no-such-flag"},
	}
	for _, args := range cases {
		require.Equal(t, 2, run(args), "args %q", args)
	}
}

// buildBinary builds clustermesh-apiserver into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "clustermesh-apiserver")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

func TestBinaryReportsStartErrorsAndStopsCleanlyOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts kube-apiserver")
	}
	bin := buildBinary(t)
	kube := kubetest.Start(t)
	pki := proxytest.NewPKI(t)
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	require.NoError(t, pki.Server.WriteFiles(certFile, keyFile, true))
	require.NoError(t, os.WriteFile(caFile, pki.CA.CertPEM, 0o644))
	args := []string{
		"--cluster-name=east", "--cluster-id=7", "--pod-cidrs=10.1.0.0/16",
		"--kubeconfig=" + kube.Kubeconfig, "--listen=127.0.0.1:0", "--health-listen=127.0.0.1:0",
		"--tls-cert=" + certFile, "--tls-key=" + keyFile, "--tls-client-ca=" + caFile,
		"--allowed-peers=remote-west", "--data-dir=" + filepath.Join(dir, "data"),
	}

	// Flag errors: exit 2, each problem named.
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "--cluster-name=East", "--cluster-id=300", "--pod-cidrs=10.1.0.0/16,10.1.0.0/24")
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "exit status: %v", err)
	require.Equal(t, 2, exit.ExitCode())
	for _, want := range []string{"--cluster-name", "--cluster-id", "300", "--pod-cidrs", "overlaps", "--tls-cert: required"} {
		require.Contains(t, stderr.String(), want)
	}

	// Unreadable certificate: exit 1, the file named.
	stderr.Reset()
	cmd = exec.Command(bin, append(append([]string{}, args...), "--tls-cert="+filepath.Join(dir, "missing.crt"))...)
	cmd.Stderr = &stderr
	err = cmd.Run()
	require.True(t, errors.As(err, &exit), "exit status: %v", err)
	require.Equal(t, 1, exit.ExitCode())
	require.Contains(t, stderr.String(), "missing.crt")

	// A good start: ready, then SIGTERM stops it with status 0. The health
	// address (port 0 above) is read from the start-up log line.
	cmd = exec.Command(bin, args...)
	stderrPipe, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var logMu sync.Mutex
	var logBuf strings.Builder
	healthAddr := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		re := regexp.MustCompile(`health="?([0-9.]+:[0-9]+)`)
		sc := bufio.NewScanner(stderrPipe)
		for sc.Scan() {
			logMu.Lock()
			logBuf.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				healthAddr <- m[1]
			}
		}
	}()
	logText := func() string {
		logMu.Lock()
		defer logMu.Unlock()
		return logBuf.String()
	}
	exited := make(chan error, 1)
	go func() {
		<-scanned // Wait must not run before the pipe is drained
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})
	var health string
	select {
	case health = <-healthAddr:
	case err := <-exited:
		t.Fatalf("exited before it started: %v\n%s", err, logText())
	case <-time.After(60 * time.Second):
		t.Fatalf("no start-up line:\n%s", logText())
	}
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 60*time.Second, 50*time.Millisecond, "binary never became ready")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, "exit after SIGTERM; log:\n%s", logText())
	case <-time.After(60 * time.Second):
		t.Fatalf("no exit after SIGTERM; log:\n%s", logText())
	}
	log := logText()
	require.True(t, strings.Contains(log, "stopped cleanly"), "log:\n%s", log)
	require.NotContains(t, log, "level=error")
}
