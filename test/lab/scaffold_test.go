package lab_test

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/test/lab"
)

// eventually polls cond until it holds or the timeout passes; then the test
// fails at once.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := waitCond(timeout, cond); err != nil {
		t.Fatalf("%s: not within %s: %v", what, timeout, err)
	}
}

// waitCond polls cond until it holds (nil) or the timeout passes (its last
// error).
func waitCond(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		<-tick.C
	}
}

// The lab's own plumbing, without podmesh: with routes a host-gw CNI would
// add by hand, every pod reaches every pod of the other clusters across the
// underlay bridge, and each receiver sees the sender's own pod IP.
func TestLabPlumbingCarriesPodTrafficAcrossTheUnderlay(t *testing.T) {
	testutils.RequireRoot(t)
	bin := buildBinaries(t, "podmesh-lab")
	ctx := withTimeout(t, 2*time.Minute)
	o := labOptions(t, testPrefix(t), bin)
	l := upLab(t, ctx, o, lab.Topology{Clusters: 2, Nodes: 2, Pods: 2, NoMesh: true})

	// Before any route exists, cross-cluster traffic must fail: otherwise the
	// matrix below would prove nothing about routes.
	pods := l.Pods()
	if _, err := lab.Probe(ctx, pods[0].NetNS, netip.AddrPortFrom(pods[len(pods)-1].IP, lab.ServeTCPPort), 500*time.Millisecond); err == nil {
		t.Fatalf("%s reached %s without any route", pods[0], pods[len(pods)-1])
	}
	for _, n := range l.Nodes() {
		for _, m := range l.Nodes() {
			if m.Cluster == n.Cluster {
				continue
			}
			if err := l.IP(ctx, n.NetNS, fmt.Sprintf("route add %s via %s proto static", m.PodCIDR, m.IP)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cells := l.Matrix(ctx)
	if want := 2 * 4 * 4; len(cells) != want {
		t.Fatalf("matrix has %d cells, want %d", len(cells), want)
	}
	var b strings.Builder
	lab.WriteMatrix(&b, cells)
	t.Logf("matrix:\n%s", b.String())
	if err := lab.MatrixErrors(cells); err != nil {
		t.Fatal(err)
	}
}

// A lab whose owner is killed (SIGKILL: no cleanup at all) loses its
// processes at once (Pdeathsig), and Down finds and removes the rest by
// prefix and state directory: namespaces, the bpffs mount, the state dir —
// and leaves alone names that only look similar.
func TestDownAfterOwnerCrashRemovesExactlyTheLab(t *testing.T) {
	testutils.RequireRoot(t)
	bin := buildBinaries(t, "podmesh-lab")
	prefix := testPrefix(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), crasherEnv+"="+prefix, "PODMESH_LAB_TEST_BIN="+bin)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = lab.Down(prefix, "", nil)
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("crasher: %q %v", line, err)
	}
	before, err := lab.Discover(prefix, "")
	if err != nil {
		t.Fatal(err)
	}
	// underlay, control plane, node, pod
	if len(before.NetNS) != 4 || len(before.Procs) != 1 || before.StateDir == "" || before.Owner == 0 {
		t.Fatalf("running lab: found %s (%v), want 4 netns, 1 process, a state dir and a live owner", before, before.NetNS)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	eventually(t, 10*time.Second, "the echo server dies with its owner", func() error {
		lo, err := lab.Discover(prefix, "")
		if err != nil {
			return err
		}
		if len(lo.Procs) > 0 {
			return fmt.Errorf("processes %v still run in the lab's namespaces", lo.Procs)
		}
		return nil
	})
	after, _ := lab.Discover(prefix, "")
	if after.Owner != 0 || len(after.NetNS) != 4 || after.StateDir == "" {
		t.Fatalf("after the crash: found %s, want 4 netns, a state dir and no owner", after)
	}

	// Look-alikes: another lab whose prefix starts with ours, and a name
	// outside the lab's grammar.
	decoys := []string{prefix + "x-c1-n1", prefix + "-c1-n1-extra"}
	for _, d := range decoys {
		if out, err := exec.Command("ip", "netns", "add", d).CombinedOutput(); err != nil {
			t.Fatalf("add decoy %s: %v %s", d, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", d).Run() })
	}

	if err := lab.Down(prefix, "", nil); err != nil {
		t.Fatalf("down: %v", err)
	}
	if lo, err := lab.Discover(prefix, ""); err != nil || !lo.Empty() {
		t.Fatalf("after down: %s (%v)", lo, err)
	}
	for _, d := range decoys {
		if _, err := os.Stat(lab.NetNSPath(d)); err != nil {
			t.Errorf("down removed %s, which is not the lab's: %v", d, err)
		}
	}
	if _, err := os.Stat(before.StateDir); !os.IsNotExist(err) {
		t.Errorf("state dir %s still there: %v", before.StateDir, err)
	}
}

// The CLI: `up` returns once the lab is ready and leaves it running in the
// background; probe and exec work inside it; `down` removes it. A
// foreground `up` tears the lab down on Ctrl-C.
func TestCLIUpProbeExecDownAndCtrlC(t *testing.T) {
	testutils.RequireRoot(t)
	bin := buildBinaries(t, "podmesh-lab")
	cli := bin + "/podmesh-lab"
	prefix := testPrefix(t)
	t.Cleanup(func() { _ = lab.Down(prefix, "", nil) })
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(cli, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("podmesh-lab %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	p := "--prefix=" + prefix
	out := run("up", p, "--bin-dir="+bin, "--no-mesh", "--clusters=1", "--nodes=1", "--pods=1")
	t.Logf("up:\n%s", out)
	lo, err := lab.Discover(prefix, "")
	if err != nil || lo.Owner == 0 || len(lo.NetNS) != 4 {
		t.Fatalf("after up: %s (%v), want a live supervisor and 4 netns", lo, err)
	}
	podIP := lab.PodIP(1, 1, 1)
	if out := run("probe", p, "c1-n1", podIP.String()); !strings.Contains(out, "receiver saw "+lab.NodeIP(1, 1).String()+":") {
		t.Errorf("probe from the node: %s", out)
	}
	if out := run("exec", p, "c1-n1-p1", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, podIP.String()+"/32") {
		t.Errorf("exec in the pod: %s", out)
	}
	if out, err := exec.Command(cli, "exec", p, "../../x", "--", "true").CombinedOutput(); err == nil {
		t.Errorf("exec accepted a namespace that is not the lab's: %s", out)
	}
	t.Logf("down: %s", run("down", p))
	if lo, err := lab.Discover(prefix, ""); err != nil || !lo.Empty() {
		t.Fatalf("after down: %s (%v)", lo, err)
	}

	// Foreground, then Ctrl-C.
	fg := exec.Command(cli, "up", p, "--bin-dir="+bin, "--no-mesh", "--clusters=1", "--nodes=1", "--pods=1", "--foreground")
	stdout, err := fg.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	fg.Stderr = testWriter{t}
	if err := fg.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	up := false
	for sc.Scan() {
		t.Log(sc.Text())
		if strings.Contains(sc.Text(), "is up") {
			up = true
			break
		}
	}
	if !up {
		t.Fatalf("foreground up ended without saying the lab is up: %v", fg.Wait())
	}
	if err := fg.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fg.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("foreground up after Ctrl-C: %v", err)
		}
	case <-time.After(60 * time.Second):
		_ = fg.Process.Kill()
		t.Fatal("foreground up did not exit within 60s of Ctrl-C")
	}
	if lo, err := lab.Discover(prefix, ""); err != nil || !lo.Empty() {
		t.Fatalf("after Ctrl-C: %s (%v)", lo, err)
	}
}
