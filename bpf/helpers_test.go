package bpf

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/internal/netnsutil"
	"github.com/podmesh/podmesh/internal/testutils"
)

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

// newNetNS creates a network namespace that is deleted when the test ends.
func newNetNS(t testing.TB) netns.NsHandle {
	t.Helper()
	return testutils.NewNetNS(t, "bpf").Handle
}

// inNetNS runs fn on a locked OS thread inside ns.
func inNetNS(ns netns.NsHandle, fn func() error) error { return netnsutil.Do(ns, fn) }

// sampleEntries are three entries of two clusters, IPv4 and IPv6.
func sampleEntries() []Entry {
	return []Entry{
		entry("10.2.0.0/16", "192.168.1.2", 2),
		entry("fd00:2::/64", "fd77::2", 2),
		entry("10.3.0.0/16", "192.168.1.3", 3),
	}
}
