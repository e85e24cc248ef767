package importer

import (
	"bytes"
	"context"
	"maps"
	"reflect"
	"sync"
	"time"

	"github.com/podmesh/podmesh/pkg/clustermesh"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Feed carries the remotes' exported services from the cache tier's
// sessions to the importer: it is the clustermesh.ServiceSink of the
// cache's Mesh (cache.Options.Services) and the importer's Options.Feed.
// It keeps only the latest state of each remote and never blocks a
// session; the importer reads it when woken, so it may start later or lag
// behind without losing anything.
type Feed struct {
	wake chan struct{}

	// mu protects clusters and seq.
	mu       sync.Mutex
	clusters map[string]feedState
	seq      uint64
}

// feedState is one remote as the cache's sessions last reported it.
type feedState struct {
	// seq orders the updates; a reader skips a cluster whose seq it has
	// applied.
	seq uint64
	// cc is the admitted config; nil when the cluster was withdrawn (its
	// file removed, its config refused or displaced).
	cc       *meshapi.ClusterConfig
	services map[string][]byte
}

// NewFeed returns an empty Feed.
func NewFeed() *Feed {
	return &Feed{wake: make(chan struct{}, 1), clusters: make(map[string]feedState)}
}

// SetClusterServices implements clustermesh.ServiceSink.
func (f *Feed) SetClusterServices(cc *meshapi.ClusterConfig, services map[string][]byte) {
	f.set(cc.Name, cc, services)
}

// RemoveClusterServices implements clustermesh.ServiceSink.
func (f *Feed) RemoveClusterServices(cluster string) { f.set(cluster, nil, nil) }

func (f *Feed) set(cluster string, cc *meshapi.ClusterConfig, services map[string][]byte) {
	f.mu.Lock()
	f.seq++
	f.clusters[cluster] = feedState{seq: f.seq, cc: cc, services: services}
	f.mu.Unlock()
	f.kick()
}

func (f *Feed) kick() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// latest returns what the cache last reported of cluster; false when it
// has reported nothing yet.
func (f *Feed) latest(cluster string) (feedState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.clusters[cluster]
	return st, ok
}

// CacheStatus is what the importer needs of the cache tier besides the
// Feed: its view of every remote (connected, fresh, why not), which the
// importer's status reports for the remotes it reads from the cache.
type CacheStatus interface {
	Status() clustermesh.Status
}

// fedCluster is what followFeed last applied of one remote: the raw values
// (so an unchanged entry is not validated again) and the validated entries.
type fedCluster struct {
	gen     uint64
	seq     uint64
	cc      *meshapi.ClusterConfig
	raw     map[string][]byte
	entries map[Key]*entry
}

// followFeed applies the Feed to the configured remotes until ctx is done:
// at every wake (a remote's services changed, or scanDir configured a
// remote), each remote whose state or source generation changed is
// validated and published.
func (imp *Importer) followFeed(ctx context.Context) {
	applied := make(map[string]*fedCluster)
	for {
		imp.applyFeed(applied)
		select {
		case <-ctx.Done():
			return
		case <-imp.opts.Feed.wake:
		}
	}
}

func (imp *Importer) applyFeed(applied map[string]*fedCluster) {
	imp.mu.Lock()
	gens := make(map[string]uint64, len(imp.sources))
	for name, s := range imp.sources {
		gens[name] = s.gen
	}
	imp.mu.Unlock()
	for name := range applied {
		if _, ok := gens[name]; !ok {
			delete(applied, name) // not configured any more
		}
	}
	for name, gen := range gens {
		st, ok := imp.opts.Feed.latest(name)
		if !ok {
			continue // the cache has not listed it yet: pending
		}
		a := applied[name]
		if a != nil && a.gen == gen && a.seq == st.seq {
			continue
		}
		if a == nil {
			a = &fedCluster{}
			applied[name] = a
		}
		a.gen, a.seq = gen, st.seq
		imp.applyFedState(name, a, st)
	}
}

// noteFormat1 explains why a cluster without the serviceExports capability
// exports nothing.
const noteFormat1 = "the cluster publishes service format 1 (no serviceExports capability): an older podmesh that publishes every Service, so none of its services is imported"

// noteWithdrawn explains a remote the cache withdrew.
const noteWithdrawn = "withdrawn by the cache: the cluster's file was removed, or its config refused (see phase)"

// applyFedState validates what changed of one remote and publishes its
// complete state.
func (imp *Importer) applyFedState(name string, a *fedCluster, st feedState) {
	switch {
	case st.cc == nil:
		a.cc, a.raw, a.entries = nil, nil, nil
		imp.publish(name, a.gen, nil, nil, noteWithdrawn)
		return
	case !st.cc.Capabilities.ServiceExports:
		// A format-1 cluster publishes every Service, exported or not:
		// importing them would leak what its owners never exported.
		a.cc, a.raw, a.entries = st.cc, nil, nil
		imp.publish(name, a.gen, nil, nil, noteFormat1)
		return
	}
	if a.entries == nil || !reflect.DeepEqual(a.cc, st.cc) {
		// Entries are checked against the config: check them all again.
		a.raw, a.entries = nil, make(map[Key]*entry)
	}
	a.cc = st.cc
	for k := range a.raw {
		if _, ok := st.services[k]; !ok {
			imp.applyEvent(name, a.entries, a.cc, kvstore.Event{Kind: kvstore.Delete, Key: k})
		}
	}
	for k, v := range st.services {
		if old, ok := a.raw[k]; ok && bytes.Equal(old, v) {
			continue
		}
		imp.applyEvent(name, a.entries, a.cc, kvstore.Event{Kind: kvstore.Upsert, Key: k, Value: v})
	}
	a.raw = st.services
	imp.publish(name, a.gen, maps.Clone(a.entries), a.cc, "")
}

// startFedSourceLocked configures a remote read from the Feed: no session
// of its own, only a view that stays pending until the cache lists it.
func (imp *Importer) startFedSourceLocked(name string, hash [32]byte) {
	imp.nextGen++
	s := &source{imp: imp, name: name, gen: imp.nextGen, hash: hash, cancel: func() {}, done: closedChan(),
		log: imp.log.WithField("cluster", name)}
	v := imp.viewLocked(name, false)
	v.gen = s.gen
	v.phase = "waiting for the cache to list the cluster"
	imp.sources[name] = s
	s.log.Info("Remote cluster configured for service import through the cache")
	imp.opts.Feed.kick()
}

// fromCache overlays the cache's view of a remote on its status: whether
// the cache's session is up and its data fresh, why not, and its failures.
func (cs *ClusterStatus) fromCache(rs clustermesh.RemoteStatus, now time.Time) {
	cs.Connected = rs.Ready
	if rs.Ready {
		cs.LastContact = now
	} else {
		if rs.Reason != "" {
			cs.Phase = rs.Reason
		}
		if rs.Synced && rs.Since.After(cs.LastContact) {
			cs.LastContact = rs.Since // current until it stopped being ready
		}
	}
	cs.LastError, cs.LastErrorTime, cs.Failures = rs.LastError, rs.LastErrorTime, rs.Failures
}
