package lab_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podmesh/podmesh/internal/testutils"
	"github.com/podmesh/podmesh/test/kubetest"
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

// hostSysctls are host-global values a kubelet would write if the lab's
// fence let it.
var hostSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

func readSysctls(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range hostSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = strings.TrimSpace(string(b))
	}
	return out
}

// The CLI on a real lab (one cluster, one node, one echo pod, no podmesh):
// `up` returns once the lab is ready and leaves it running under a
// background supervisor; status, probe and exec work inside it. Then the
// supervisor is killed (SIGKILL: no cleanup at all), and `down` finds and
// removes everything by prefix, state directory and cgroups — namespaces,
// the containers and every other process, cgroups, mounts, state — leaves
// alone names that only look similar, and the host's sysctls the kubelet
// wanted to change are as before.
func TestCLIUpProbeExecCrashDown(t *testing.T) {
	testutils.RequireRoot(t)
	bin := buildBinaries(t, "podmesh-lab")
	tools, err := kubetest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	labImages(t) // builds the images into imagesDir
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
	sysctls := readSysctls(t)
	p := "--prefix=" + prefix
	out := run("up", p, "--bin-dir="+tools, "--images-dir="+imagesDir, "--no-mesh", "--clusters=1", "--nodes=1", "--pods=1")
	t.Logf("up:\n%s", out)
	lo, err := lab.Discover(prefix, "")
	if err != nil || lo.Owner == 0 || len(lo.NetNS) != 3 || len(lo.Cgroups) == 0 {
		t.Fatalf("after up: %s (%v), want a live supervisor, 3 netns and the node's cgroups", lo, err)
	}
	st, err := lab.ReadState(lo.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := withTimeout(t, time.Minute)
	pods, err := st.Layout.LivePods(ctx)
	if err != nil || len(pods) != 1 {
		t.Fatalf("echo pods %v (%v), want one", pods, err)
	}
	status := run("status", p)
	t.Logf("status:\n%s", status)
	if !strings.Contains(status, pods[0].Name) || !strings.Contains(status, pods[0].IP.String()) {
		t.Errorf("status does not list the echo pod %s %s", pods[0].Name, pods[0].IP)
	}
	// From the node to its pod over the CNI bridge: the receiver sees the
	// bridge's gateway address, the first of the node's pod CIDR.
	gw := lab.NodePodCIDR(1, 1).Addr().Next()
	if out := run("probe", p, "c1-n1", pods[0].IP.String()); !strings.Contains(out, "receiver saw "+gw.String()+":") {
		t.Errorf("probe from the node to %s: %s, want the receiver to see %s", pods[0].IP, out, gw)
	}
	if out := run("exec", p, "c1-n1", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, lab.NodeIP(1, 1).String()+"/16") {
		t.Errorf("exec in the node: %s", out)
	}
	if out, err := exec.Command(cli, "exec", p, "../../x", "--", "true").CombinedOutput(); err == nil {
		t.Errorf("exec accepted a namespace that is not the lab's: %s", out)
	}

	// The supervisor crashes.
	if err := syscall.Kill(st.OwnerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the supervisor gone", func() error {
		if lo, _ := lab.Discover(prefix, ""); lo.Owner != 0 {
			return fmt.Errorf("owner %d alive", lo.Owner)
		}
		return nil
	})
	after, _ := lab.Discover(prefix, "")
	if len(after.NetNS) != 3 || after.StateDir == "" || len(after.Cgroups) == 0 {
		t.Fatalf("after the crash: found %s, want 3 netns, a state dir and the node's cgroups", after)
	}
	t.Logf("after the crash: %s", after)
	// Look-alikes: another lab whose prefix starts with ours, and a name
	// outside the lab's grammar.
	decoys := []string{prefix + "x-c1-n1", prefix + "-c1-n1-extra"}
	for _, d := range decoys {
		if out, err := exec.Command("ip", "netns", "add", d).CombinedOutput(); err != nil {
			t.Fatalf("add decoy %s: %v %s", d, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", d).Run() })
	}
	t.Logf("down: %s", run("down", p))
	if lo, err := lab.Discover(prefix, ""); err != nil || !lo.Empty() {
		t.Fatalf("after down: %s (%v)", lo, err)
	}
	for _, d := range decoys {
		if _, err := os.Stat(lab.NetNSPath(d)); err != nil {
			t.Errorf("down removed %s, which is not the lab's: %v", d, err)
		}
	}
	if _, err := os.Stat(after.StateDir); !os.IsNotExist(err) {
		t.Errorf("state dir %s still there: %v", after.StateDir, err)
	}
	if now := readSysctls(t); fmt.Sprint(now) != fmt.Sprint(sysctls) {
		t.Errorf("host sysctls changed: before %v, after %v", sysctls, now)
	}
}
