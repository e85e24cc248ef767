package images

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/internal/testutils"
)

// privateContainerd starts a containerd of its own — its own root, state,
// socket and plugin directory under a temporary directory, in a private
// mount namespace so that the mounts of unpacking vanish with it — and
// returns its socket and root. It is stopped, by PID, when the test ends.
func privateContainerd(t *testing.T) (sock, root string) {
	t.Helper()
	testutils.RequireRoot(t)
	for _, bin := range []string{"containerd", "ctr", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed (Debian: apt-get install containerd util-linux)", bin)
		}
	}
	dir := t.TempDir()
	sock, root = filepath.Join(dir, "containerd.sock"), filepath.Join(dir, "root")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, root, filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"))
	cfg := filepath.Join(dir, "config.toml")
	require.NoError(t, os.WriteFile(cfg, []byte(config), 0o600))
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	require.NoError(t, err)
	defer logf.Close()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "containerd", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	require.Eventually(t, func() bool {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd exited: %v\n%s", err, log)
		default:
		}
		return exec.Command("ctr", "-a", sock, "version").Run() == nil
	}, 30*time.Second, 50*time.Millisecond, "containerd answers on %s", sock)
	return sock, root
}

func ctr(t *testing.T, sock string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("ctr", append([]string{"-a", sock, "-n", "k8s.io"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), "ctr %s:\n%s", strings.Join(args, " "), out.String())
	return out.String()
}

// TestArchivesImportIntoContainerd imports every archive the way the lab
// does (`ctr -n k8s.io images import`, which also unpacks into the
// overlayfs snapshotter) and then reads the unpacked binaries back from the
// snapshots: the content, the mode and CoreDNS's file capability.
func TestArchivesImportIntoContainerd(t *testing.T) {
	sock, root := privateContainerd(t)
	bin := binDir(t)
	imgs := buildFromBinDir(t, bin, t.TempDir())
	for _, img := range imgs {
		ctr(t, sock, "images", "import", img.Archive)
	}
	listed := strings.Fields(ctr(t, sock, "images", "ls", "-q"))
	for _, img := range imgs {
		require.Contains(t, listed, img.Ref)
	}

	// Each image is one layer, so each committed overlayfs snapshot's fs/
	// directory is exactly one image's filesystem.
	snaps, err := filepath.Glob(filepath.Join(root, "io.containerd.snapshotter.v1.overlayfs", "snapshots", "*", "fs"))
	require.NoError(t, err)
	found := map[string]bool{}
	for _, img := range imgs {
		s := specOf(t, img.Name)
		want, err := os.ReadFile(filepath.Join(bin, s.File))
		require.NoError(t, err)
		for _, fs := range snaps {
			got, err := os.ReadFile(filepath.Join(fs, s.Path))
			if err != nil || !bytes.Equal(got, want) {
				continue
			}
			found[img.Name] = true
			fi, err := os.Stat(filepath.Join(fs, s.Path))
			require.NoError(t, err)
			require.EqualValues(t, 0o755, fi.Mode().Perm(), "%s mode", img.Name)
			buf := make([]byte, 64)
			n, err := unix.Getxattr(filepath.Join(fs, s.Path), "security.capability", buf)
			if len(s.Caps) > 0 {
				require.NoError(t, err, "%s: file capability unpacked", img.Name)
				require.Equal(t, fileCaps(s.Caps), buf[:n])
			} else {
				require.ErrorIs(t, err, unix.ENODATA, "%s has no file capability", img.Name)
			}
		}
	}
	for _, img := range imgs {
		require.True(t, found[img.Name], "%s is unpacked with its binary at %s", img.Name, specOf(t, img.Name).Path)
	}
}
