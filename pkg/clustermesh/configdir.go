package clustermesh

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// RemoteFile is what the config directory says about one remote cluster.
type RemoteFile struct {
	Name string
	// Config is the loaded file; nil when Err is set.
	Config *kvstore.Config
	// Err says why the file cannot be used (malformed YAML, missing
	// certificate, unreadable key...). The cluster is then in error.
	Err error
	// Hash identifies the content (YAML and referenced files), or the error.
	Hash [sha256.Size]byte
}

// ScanDir reads every remote-cluster file in dir. A file is a remote cluster
// when its name is a valid cluster name other than local; anything else
// (PEM files such as east.crt, dotfiles, ..data, directories) is ignored. A
// file that cannot be loaded is returned with Err set, never dropped, so the
// cluster shows up in error instead of disappearing.
func ScanDir(dir, local string) (map[string]RemoteFile, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read config directory %s: %w", dir, err)
	}
	out := make(map[string]RemoteFile)
	for _, e := range ents {
		name := e.Name()
		if !IsClusterFileName(name, local) {
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path) // follows the ..data symlinks
		if err == nil && fi.IsDir() {
			continue
		}
		if errors.Is(err, fs.ErrNotExist) {
			// A dangling symlink: the kubelet is removing this key.
			continue
		}
		rf := RemoteFile{Name: name}
		if err != nil {
			rf.Err = fmt.Errorf("stat %s: %w", path, err)
		} else {
			rf.Config, rf.Err = kvstore.LoadConfig(path, nil)
		}
		if rf.Err != nil {
			rf.Config = nil
			rf.Hash = sha256.Sum256([]byte(rf.Err.Error()))
		} else {
			rf.Hash = rf.Config.Hash
		}
		out[name] = rf
	}
	return out, nil
}

// IsClusterFileName reports whether a directory entry names a remote cluster.
func IsClusterFileName(name, local string) bool {
	if strings.HasPrefix(name, ".") || name == local {
		return false
	}
	return meshapi.ValidateClusterName(name) == nil
}

// watchDir calls scan once, then again after every inotify event in dir and
// at least every interval (referenced certificates may live elsewhere, and
// inotify may be unavailable). It returns when ctx is done.
func watchDir(ctx context.Context, dir string, interval time.Duration, log logrus.FieldLogger, scan func()) {
	fd := -1
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		if fd < 0 {
			fd = addDirWatch(dir, log)
		}
		scan()
		if ctx.Err() != nil {
			return
		}
		if fd < 0 {
			if kvstore.Sleep(ctx, interval) != nil {
				return
			}
			continue
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(interval.Milliseconds()))
		if err != nil && !errors.Is(err, unix.EINTR) {
			log.WithError(err).Warn("Polling inotify failed; falling back to periodic scans")
			unix.Close(fd)
			fd = -1
			continue
		}
		if n > 0 {
			if ignored := drainInotify(fd, buf); ignored {
				// The directory itself went away or was replaced.
				unix.Close(fd)
				fd = -1
			}
		}
	}
}

// addDirWatch returns an inotify descriptor watching dir, or -1.
func addDirWatch(dir string, log logrus.FieldLogger) int {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		log.WithError(err).Warn("Cannot create inotify instance; scanning periodically only")
		return -1
	}
	const mask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
		unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_MODIFY | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return -1
	}
	return fd
}

// drainInotify reads all pending events; it reports whether the watch was
// dropped (directory deleted or moved).
func drainInotify(fd int, buf []byte) bool {
	gone := false
	for {
		n, err := unix.Read(fd, buf)
		if n <= 0 || err != nil {
			return gone
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafePointer(&buf[off]))
			if ev.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
				gone = true
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}
