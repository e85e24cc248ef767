package kvstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventKind says what an Event reports.
type EventKind uint8

const (
	// Upsert: Key was created or changed; Value is its new value.
	Upsert EventKind = iota + 1
	// Delete: Key no longer exists.
	Delete
	// Listed: a full listing is complete. Every key the consumer was told
	// about and not told to delete exists at Revision.
	Listed
)

func (k EventKind) String() string {
	switch k {
	case Upsert:
		return "upsert"
	case Delete:
		return "delete"
	case Listed:
		return "listed"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event is one change under a watched prefix.
type Event struct {
	Kind  EventKind
	Key   string
	Value []byte
	// Revision is the key's modification revision (Upsert), the revision of
	// the deletion (Delete) or of the listing (Listed).
	Revision int64
}

// KV is the part of an etcd client a ListWatcher uses.
type KV interface {
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
	Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan
}

// DefaultPageSize is the number of keys fetched per listing request.
const DefaultPageSize = 500

// ListWatcher lists a prefix and then watches it from the listing's revision.
type ListWatcher struct {
	Client KV
	Prefix string
	// PageSize bounds the keys per listing request; DefaultPageSize when 0.
	PageSize int64
	// Backoff paces retries after a failed listing or a broken watch; it
	// starts over after every success.
	Backoff Backoff
	Log     logrus.FieldLogger

	// known maps each key the consumer holds to its modification revision.
	// Only Run's goroutine touches it.
	known map[string]int64
}

// Run lists and watches until ctx is done, calling handle for every event
// from the calling goroutine. It re-watches from the last revision + 1 when a
// watch breaks, and re-lists when that revision has been compacted. It
// returns ctx.Err().
func (w *ListWatcher) Run(ctx context.Context, handle func(Event)) error {
	if w.known == nil {
		w.known = make(map[string]int64)
	}
	log := w.Log
	if log == nil {
		log = logrus.New()
	}
	log = log.WithField("prefix", w.Prefix)
	for {
		rev, err := w.list(ctx, handle)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			log.WithError(err).Warn("Listing failed; retrying")
			if err := Sleep(ctx, w.Backoff.Next()); err != nil {
				return err
			}
			continue
		}
		handle(Event{Kind: Listed, Revision: rev})
		for {
			err = w.watch(ctx, &rev, handle)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, rpctypes.ErrCompacted) {
				log.WithField("revision", rev).Info("Watch revision compacted; re-listing")
				break
			}
			log.WithError(err).WithField("revision", rev+1).Info("Watch ended; resuming")
			if err := Sleep(ctx, w.Backoff.Next()); err != nil {
				return err
			}
		}
	}
}

// list fetches the prefix page by page at one revision, emits an Upsert for
// every key that is new or changed since the consumer last heard of it and a
// Delete for every known key that is gone, and returns the revision.
func (w *ListWatcher) list(ctx context.Context, handle func(Event)) (int64, error) {
	page := w.PageSize
	if page <= 0 {
		page = DefaultPageSize
	}
	end := clientv3.GetPrefixRangeEnd(w.Prefix)
	seen := make(map[string]struct{}, len(w.known))
	key := w.Prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := w.Client.Get(ctx, key, opts...)
		if err != nil {
			return 0, fmt.Errorf("list %s: %w", w.Prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			seen[k] = struct{}{}
			if w.known[k] == kv.ModRevision {
				continue
			}
			w.known[k] = kv.ModRevision
			handle(Event{Kind: Upsert, Key: k, Value: kv.Value, Revision: kv.ModRevision})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	for k := range w.known {
		if _, ok := seen[k]; !ok {
			delete(w.known, k)
			handle(Event{Kind: Delete, Key: k, Revision: rev})
		}
	}
	w.Backoff.Reset()
	return rev, nil
}

// watch follows the prefix from *rev+1, advancing *rev past every event
// delivered, until the watch ends. It returns why it ended.
func (w *ListWatcher) watch(ctx context.Context, rev *int64, handle func(Event)) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := w.Client.Watch(wctx, w.Prefix, clientv3.WithPrefix(), clientv3.WithRev(*rev+1), clientv3.WithProgressNotify())
	for resp := range ch {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch %s from revision %d: %w", w.Prefix, *rev+1, err)
		}
		if resp.IsProgressNotify() {
			*rev = max(*rev, resp.Header.Revision)
			continue
		}
		for _, ev := range resp.Events {
			k := string(ev.Kv.Key)
			switch ev.Type {
			case mvccpb.PUT:
				w.known[k] = ev.Kv.ModRevision
				handle(Event{Kind: Upsert, Key: k, Value: ev.Kv.Value, Revision: ev.Kv.ModRevision})
			case mvccpb.DELETE:
				if _, ok := w.known[k]; ok {
					delete(w.known, k)
					handle(Event{Kind: Delete, Key: k, Revision: ev.Kv.ModRevision})
				}
			}
			*rev = max(*rev, ev.Kv.ModRevision)
		}
		w.Backoff.Reset()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("watch channel closed")
}
