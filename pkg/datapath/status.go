package datapath

import (
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
)

// This file holds the reconciler's per-object status and what it sums up to:
// Status, the metrics and the log line of every pass.

// Counter is a packet and byte count.
type Counter struct {
	Packets, Bytes uint64
}

// Status is a point-in-time view of the reconciler.
type Status struct {
	Mode string
	// Programmed and Failed count the desired prefixes per remote cluster
	// name that are (or could not be) realised in the kernel.
	Programmed map[string]int
	Failed     map[string]int
	// Errors holds the error of each failed object, by prefix (bounded).
	Errors map[string]string
	// LastError is the last reconcile's error, empty when it fully succeeded.
	LastError     string
	LastReconcile time.Time
	// LastDuration is how long the last reconcile pass took, LastPass
	// whether it was a "full" pass (re-read the kernel) or an "incremental"
	// one (only the objects whose revision moved).
	LastDuration time.Duration
	LastPass     string
	// LastWrites counts the kernel objects the last pass wrote or deleted;
	// a pass over a converged kernel writes nothing.
	LastWrites int
	// LastOutOfSync is how many kernel objects the last full pass found
	// missing, different or unwanted (and repaired); OutOfSyncTotal sums
	// it over every full pass.
	LastOutOfSync   int
	OutOfSyncTotal  uint64
	ReconcileErrors uint64
	// AppliedVersion is the Desired version the kernel fully realises (0
	// until one reconcile succeeded without failures).
	AppliedVersion uint64
	// Traffic holds tx counters per remote cluster ID (ebpf mode only).
	Traffic map[uint32]Counter
	// Drops holds the program's drop counters by reason: "miss" (no ipcache
	// entry), "malformed", "tunnel_key", "not_configured" (ebpf mode only).
	Drops map[string]Counter
}

// objStatus is a failed object: its entry as last processed and the error
// that kept it from the kernel.
type objStatus struct {
	entry   Entry
	err     error
	invalid bool // validate rejected it: it is not in want
}

// errorsKept bounds Status.Errors.
const errorsKept = 64

// putWant records valid object p with entry e in want, keeping the
// per-cluster count.
func (r *Reconciler) putWant(p netip.Prefix, e Entry) {
	old, ok := r.want[p]
	r.want[p] = e
	r.wantGen++
	if ok && old.Cluster == e.Cluster {
		return
	}
	if ok {
		r.uncount(old.Cluster)
	}
	r.wantCount[e.Cluster]++
}

// dropWant removes object p from want.
func (r *Reconciler) dropWant(p netip.Prefix) {
	if old, ok := r.want[p]; ok {
		delete(r.want, p)
		r.wantGen++
		r.uncount(old.Cluster)
	}
}

func (r *Reconciler) uncount(cluster string) {
	if r.wantCount[cluster]--; r.wantCount[cluster] <= 0 {
		delete(r.wantCount, cluster)
	}
}

// forget drops the status of an object.
func (r *Reconciler) forget(p netip.Prefix) {
	r.dropWant(p)
	delete(r.failed, p)
}

// hasObjects reports whether any live object of cluster was processed.
func (r *Reconciler) hasObjects(cluster string) bool {
	if r.wantCount[cluster] > 0 {
		return true
	}
	for _, st := range r.failed {
		if st.entry.Cluster == cluster {
			return true
		}
	}
	return false
}

func countByCluster(es iter.Seq[Entry]) map[string]int {
	out := make(map[string]int)
	for e := range es {
		out[e.Cluster]++
	}
	return out
}

// finish publishes a pass's outcome to status, metrics and the log.
func (r *Reconciler) finish(start time.Time, kind string, writes, outOfSync int, oldest time.Time, passErr error) bool {
	programmed := maps.Clone(r.wantCount)
	failedBy := make(map[string]int)
	nFailed := len(r.failed)
	for _, st := range r.failed {
		failedBy[st.entry.Cluster]++
		if !st.invalid {
			programmed[st.entry.Cluster]--
		}
	}
	maps.DeleteFunc(programmed, func(_ string, n int) bool { return n <= 0 })
	errs := make(map[string]string)
	if nFailed+len(r.undeleted) > 0 {
		failed := make(map[netip.Prefix]error, nFailed+len(r.undeleted))
		for p, st := range r.failed {
			failed[p.Masked()] = st.err
		}
		maps.Copy(failed, r.undeleted)
		for _, p := range sortedPrefixes(failed) {
			if len(errs) == errorsKept {
				break
			}
			errs[p.String()] = failed[p].Error()
		}
		passErr = errors.Join(passErr, fmt.Errorf("%d prefixes failed", nFailed+len(r.undeleted)))
	}
	traffic, drops, terr := r.b.traffic()
	err := errors.Join(passErr, terr)
	ok := err == nil
	r.lastOK = passErr == nil
	now := time.Now()
	if ok && !oldest.IsZero() {
		r.metrics.convergence.Observe(now.Sub(oldest).Seconds())
	}
	r.metrics.setProgrammed(programmed, failedBy)
	r.metrics.setTraffic(traffic, r.clusterNames, drops)
	if !ok {
		r.metrics.reconcileErrors.Inc()
	}

	r.mu.Lock()
	r.status.Programmed = programmed
	r.status.Failed = failedBy
	r.status.Errors = errs
	r.status.LastReconcile = now
	r.status.LastDuration = now.Sub(start)
	r.status.LastPass = kind
	r.status.LastWrites = writes
	if kind == passFull {
		r.status.LastOutOfSync = outOfSync
		r.status.OutOfSyncTotal += uint64(outOfSync)
	}
	if ok {
		r.status.LastError = ""
		r.status.AppliedVersion = r.rev
	} else {
		r.status.LastError = err.Error()
		r.status.ReconcileErrors++
	}
	if traffic != nil {
		r.status.Traffic = traffic
	}
	if drops != nil {
		r.status.Drops = drops
	}
	r.mu.Unlock()

	objects := 0
	for _, n := range r.wantCount {
		objects += n
	}
	fields := logrus.Fields{"pass": kind, "revision": r.rev, "objects": objects, "writes": writes, "duration": now.Sub(start)}
	if kind == passFull {
		fields["out_of_sync"] = outOfSync
	}
	if ok {
		r.log.WithFields(fields).Debug("Datapath reconciled")
	} else {
		r.log.WithFields(fields).WithError(err).Warn("Datapath reconcile incomplete")
	}
	return ok
}

// Status returns a copy of the current status.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Programmed = maps.Clone(s.Programmed)
	s.Failed = maps.Clone(s.Failed)
	s.Errors = maps.Clone(s.Errors)
	s.Traffic = maps.Clone(s.Traffic)
	s.Drops = maps.Clone(s.Drops)
	return s
}
