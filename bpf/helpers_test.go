package bpf

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/internal/netnsutil"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped with -short: privileged datapath test (loads BPF, uses bpffs and network namespaces)")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to load BPF programs, pin to bpffs and create network namespaces")
	}
}

func randomSuffix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// testPinDir returns a fresh pin directory removed when the test ends:
// /sys/fs/bpf/podmesh-test-<random> when /sys/fs/bpf is a bpffs, otherwise
// the same name inside a private bpffs mounted on a temporary directory (the
// host's /sys/fs/bpf is never mounted or touched).
func testPinDir(t testing.TB) string {
	t.Helper()
	base := "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(base, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		base = t.TempDir()
		require.NoError(t, MountBPFFS(base), "mount private bpffs")
		t.Cleanup(func() {
			if err := unix.Unmount(base, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount private bpffs %s: %v", base, err)
			}
		})
	}
	dir := filepath.Join(base, "podmesh-test-"+randomSuffix(t))
	t.Cleanup(func() {
		// Remove detaches what the test left attached; RemoveAll catches
		// pins a failed test left in odd places.
		if err := Remove(dir, 0); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}

func testLogger(t testing.TB) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(testWriter{t})
	l.SetLevel(logrus.DebugLevel)
	return l
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// loadTest loads a datapath with a fresh pin directory and closes it when
// the test ends.
func loadTest(t testing.TB, localClusterID uint32) (*Datapath, string) {
	t.Helper()
	dir := testPinDir(t)
	d, err := Load(Options{PinDir: dir, LocalClusterID: localClusterID, Log: testLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d, dir
}

// newNetNS creates a named network namespace with a unique random name and
// deletes it when the test ends.
func newNetNS(t testing.TB) netns.NsHandle {
	t.Helper()
	name := "podmesh-bpf-" + randomSuffix(t)
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result)
	go func() {
		// NewNamed moves this thread into the new namespace. The thread is
		// never unlocked, so the runtime discards it when the goroutine ends
		// and no other goroutine ever runs in the wrong namespace.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		ch <- result{ns, err}
	}()
	r := <-ch
	require.NoError(t, r.err, "create netns %s", name)
	t.Cleanup(func() {
		r.ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return r.ns
}

// inNetNS runs fn on a locked OS thread inside ns.
func inNetNS(ns netns.NsHandle, fn func() error) error { return netnsutil.Do(ns, fn) }
