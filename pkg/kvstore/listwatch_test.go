package kvstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
)

// recorder keeps every event and the state they imply.
type recorder struct {
	// mu protects events, state and listed.
	mu     sync.Mutex
	events []kvstore.Event
	state  map[string]string
	listed int
}

func newRecorder() *recorder { return &recorder{state: make(map[string]string)} }

func (r *recorder) handle(ev kvstore.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	switch ev.Kind {
	case kvstore.Upsert:
		r.state[ev.Key] = string(ev.Value)
	case kvstore.Delete:
		delete(r.state, ev.Key)
	case kvstore.Listed:
		r.listed++
	}
}

func (r *recorder) snapshot() (map[string]string, int, []kvstore.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]string, len(r.state))
	for k, v := range r.state {
		m[k] = v
	}
	return m, r.listed, append([]kvstore.Event(nil), r.events...)
}

// waitFor waits until cond holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, d, 10*time.Millisecond, "waiting for %s", what)
}

// connect writes a client config for addr (through a forwarder or direct)
// and builds a client from it with kvstore's own loader.
func connect(t *testing.T, e *kvstoretest.Etcd, addr string) *kvstore.Config {
	t.Helper()
	dir := t.TempDir()
	e.WriteClientFiles(t, dir, "client", "remote-test")
	b, err := os.ReadFile(e.CAFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), b, 0o644))
	path := filepath.Join(dir, "remote")
	require.NoError(t, os.WriteFile(path, kvstoretest.ClientYAML("https://"+addr, "ca.crt", "client.crt", "client.key"), 0o600))
	cfg, err := kvstore.LoadConfig(path, logrus.New())
	require.NoError(t, err)
	return cfg
}

func run(t *testing.T, cfg *kvstore.Config, prefix string, page int64) *recorder {
	t.Helper()
	cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{DialTimeout: 2 * time.Second, KeepAlive: time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	rec := newRecorder()
	lw := &kvstore.ListWatcher{Client: cli, Prefix: prefix, PageSize: page, Backoff: kvstore.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}, Log: logrus.New()}
	done := make(chan error, 1)
	go func() { done <- lw.Run(ctx, rec.handle) }()
	t.Cleanup(func() {
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
		cli.Close()
	})
	return rec
}

func TestListWatchListsPagesThenWatches(t *testing.T) {
	e := kvstoretest.StartEtcd(t, "lw")
	for i := range 25 {
		e.Put(t, fmt.Sprintf("p/k%02d", i), "v")
	}
	e.Put(t, "other/k", "not under the prefix")
	rec := run(t, connect(t, e, e.Addr), "p/", 7)

	waitFor(t, 10*time.Second, "first listing", func() bool { _, n, _ := rec.snapshot(); return n == 1 })
	state, _, events := rec.snapshot()
	require.Len(t, state, 25)
	require.Equal(t, kvstore.Listed, events[len(events)-1].Kind, "Listed comes after every listed key")

	e.Put(t, "p/k00", "changed")
	e.Delete(t, "p/k01", false)
	e.Put(t, "p/new", "n")
	waitFor(t, 10*time.Second, "watched changes", func() bool {
		s, _, _ := rec.snapshot()
		_, gone := s["p/k01"]
		return s["p/k00"] == "changed" && !gone && s["p/new"] == "n"
	})
	state, listed, _ := rec.snapshot()
	require.Len(t, state, 25)
	require.Equal(t, 1, listed, "a watch needs no re-list")
}

func TestListWatchResumesAfterDisconnectWithoutRelisting(t *testing.T) {
	e := kvstoretest.StartEtcd(t, "lw")
	fwd := kvstoretest.StartForwarder(t, e.Addr)
	e.Put(t, "p/a", "1")
	e.Put(t, "p/b", "1")
	rec := run(t, connect(t, e, fwd.Addr), "p/", 0)
	waitFor(t, 10*time.Second, "first listing", func() bool { _, n, _ := rec.snapshot(); return n == 1 })

	fwd.Cut()
	e.Put(t, "p/a", "2")
	e.Delete(t, "p/b", false)
	e.Put(t, "p/c", "1")
	fwd.Restore(t)

	waitFor(t, 30*time.Second, "changes made while cut", func() bool {
		s, _, _ := rec.snapshot()
		_, hasB := s["p/b"]
		return s["p/a"] == "2" && !hasB && s["p/c"] == "1"
	})
	_, listed, events := rec.snapshot()
	require.Equal(t, 1, listed, "resumed from the last revision, no re-list")
	var deletes []string
	for _, ev := range events {
		if ev.Kind == kvstore.Delete {
			deletes = append(deletes, ev.Key)
		}
	}
	require.Equal(t, []string{"p/b"}, deletes)
}

func TestListWatchRelistsAfterCompactionAndDeletesOnlyVanishedKeys(t *testing.T) {
	e := kvstoretest.StartEtcd(t, "lw")
	fwd := kvstoretest.StartForwarder(t, e.Addr)
	for _, k := range []string{"p/keep", "p/change", "p/vanish"} {
		e.Put(t, k, "1")
	}
	rec := run(t, connect(t, e, fwd.Addr), "p/", 2)
	waitFor(t, 10*time.Second, "first listing", func() bool { _, n, _ := rec.snapshot(); return n == 1 })
	_, _, before := rec.snapshot()

	fwd.Cut()
	e.Put(t, "p/change", "2")
	e.Delete(t, "p/vanish", false)
	e.Put(t, "p/new", "1")
	e.Put(t, "p/new", "2") // history the watcher cannot replay after compaction
	e.Compact(t)
	fwd.Restore(t)

	waitFor(t, 30*time.Second, "re-list after compaction", func() bool { _, n, _ := rec.snapshot(); return n == 2 })
	state, _, events := rec.snapshot()
	require.Equal(t, map[string]string{"p/keep": "1", "p/change": "2", "p/new": "2"}, state)

	after := events[len(before):]
	var deleted, upserted []string
	for _, ev := range after {
		switch ev.Kind {
		case kvstore.Delete:
			deleted = append(deleted, ev.Key)
		case kvstore.Upsert:
			upserted = append(upserted, ev.Key)
		}
	}
	require.Equal(t, []string{"p/vanish"}, deleted, "only the vanished key is deleted")
	require.ElementsMatch(t, []string{"p/change", "p/new"}, upserted, "unchanged keys are not re-emitted")
	require.Equal(t, kvstore.Listed, after[len(after)-1].Kind)
}
