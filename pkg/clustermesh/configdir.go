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

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"

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

// watchDir calls scan once, then again after every batch of file system
// events in dir and at least every interval (referenced certificates may
// live elsewhere, and events may be unavailable). A kubelet Secret volume
// swaps its ..data symlink atomically, which shows as events on dir itself.
// It returns when ctx is done.
func watchDir(ctx context.Context, dir string, interval time.Duration, log logrus.FieldLogger, scan func()) {
	var w *fsnotify.Watcher
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		if w == nil {
			w = addDirWatch(dir, log)
		}
		scan()
		var events <-chan fsnotify.Event
		var errs <-chan error
		if w != nil {
			events, errs = w.Events, w.Errors
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case ev, ok := <-events:
			if !ok || dirGone(dir, ev) || !drainEvents(dir, w) {
				// The directory itself went away or was replaced.
				w.Close()
				w = nil
			}
		case err := <-errs:
			log.WithError(err).Warn("Watching the config directory failed; scanning periodically until it works again")
			w.Close()
			w = nil
		}
	}
}

// addDirWatch returns a watcher of dir, or nil.
func addDirWatch(dir string, log logrus.FieldLogger) *fsnotify.Watcher {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.WithError(err).Warn("Cannot watch the config directory; scanning periodically only")
		return nil
	}
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil
	}
	return w
}

// drainEvents consumes the events already queued, so one scan covers a
// burst; it reports false when the directory itself went away.
func drainEvents(dir string, w *fsnotify.Watcher) bool {
	for {
		select {
		case ev, ok := <-w.Events:
			if !ok || dirGone(dir, ev) {
				return false
			}
		default:
			return true
		}
	}
}

func dirGone(dir string, ev fsnotify.Event) bool {
	return filepath.Clean(ev.Name) == filepath.Clean(dir) && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename))
}
