package kubesync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Defaults of Config.
const (
	DefaultWorkers       = 4
	DefaultCoalesceDelay = 100 * time.Millisecond
	kindMeta             = "meta" // cluster config, heartbeat, canaries, strays
	serviceIndex         = "service"
)

// Config of a Syncer.
type Config struct {
	Cluster Cluster
	// Kube is the local cluster's API.
	Kube kubernetes.Interface
	// MCS is the local cluster's Multi-Cluster Services API: ServiceExports
	// are read and their Valid and Ready conditions written through it.
	MCS mcsclient.Interface
	// Etcd is the writer client (etcdserver.Server.Writer).
	Etcd KV
	// Workers write batches of keys to etcd in parallel, one transaction
	// per batch; default DefaultWorkers.
	Workers int
	// CoalesceDelay is the shortest time between two writes of one key.
	// A change of a key that was not written within it is written at once;
	// further changes wait until it has passed, so a burst of updates of
	// one object costs one write per CoalesceDelay. Default
	// DefaultCoalesceDelay; negative means no limit.
	CoalesceDelay time.Duration
	// HeartbeatInterval defaults to meshapi.HeartbeatInterval.
	HeartbeatInterval time.Duration
	Metrics           *Metrics
	Log               logrus.FieldLogger
}

// KV is the part of an etcd client the sync uses; *clientv3.Client has it.
type KV interface {
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
	Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error)
	Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error)
	Txn(ctx context.Context) clientv3.Txn
}

// Syncer mirrors Kubernetes into etcd. Create with New, start with Run.
type Syncer struct {
	cfg       Config
	log       logrus.FieldLogger
	m         *Metrics
	queue     workqueue.TypedRateLimitingInterface[string]
	ready     chan struct{}
	readyOnce sync.Once // closes ready

	// mu protects everything below.
	mu sync.Mutex
	// desired is the value each key should hold; a key that is absent
	// should not exist, once its kind is listed.
	desired map[string]string
	// actual is what etcd holds, as far as this process knows (it is the
	// only writer): the listing at start plus its own writes.
	actual map[string]string
	// dirty holds the keys whose desired and actual values differ, by kind.
	dirty map[string]map[string]struct{}
	// listed is set once a kind's informers have delivered their first list.
	listed map[string]bool
	// canaried is set once a kind's canary has been queued.
	canaried map[string]bool
	// strayCleanup is set once keys of no kind have been queued for deletion.
	strayCleanup bool
	// notExported remembers why each object is not exported (for the gauge
	// and to log a reason only when it changes).
	notExported map[string]reasonKey
	// nextWrite is, per key, the earliest time it may be written again: the
	// time it was last taken for a write plus CoalesceDelay.
	nextWrite map[string]time.Time
	// status is told about written service keys; nil when ServiceExports
	// are not served.
	status *exportStatus
}

type reasonKey struct{ kind, reason string }

// New checks the configuration and returns a Syncer.
func New(cfg Config) (*Syncer, error) {
	c := cfg.Cluster.ClusterConfig()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("new sync: %w", err)
	}
	if cfg.Kube == nil || cfg.MCS == nil || cfg.Etcd == nil {
		return nil, errors.New("new sync: Kubernetes, MCS and etcd clients are required")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.CoalesceDelay == 0 {
		cfg.CoalesceDelay = DefaultCoalesceDelay
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = meshapi.HeartbeatInterval
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	s := &Syncer{
		cfg: cfg,
		log: cfg.Log.WithField("cluster", cfg.Cluster.Name),
		m:   cfg.Metrics,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{},
		),
		ready:       make(chan struct{}),
		desired:     map[string]string{},
		actual:      map[string]string{},
		dirty:       map[string]map[string]struct{}{},
		listed:      map[string]bool{},
		canaried:    map[string]bool{},
		notExported: map[string]reasonKey{},
		nextWrite:   map[string]time.Time{},
	}
	depth := func() float64 { return float64(s.queue.Len()) }
	s.m.depth.Store(&depth)
	return s, nil
}

// Ready is closed once every kind's canary is in etcd.
func (s *Syncer) Ready() <-chan struct{} { return s.ready }

// Run syncs until ctx is done. It returns an error only if it cannot start.
func (s *Syncer) Run(ctx context.Context) error {
	defer s.queue.ShutDown()
	if err := s.loadActual(ctx); err != nil {
		return err
	}
	cc, err := meshapi.Encode(s.cfg.Cluster.ClusterConfig())
	if err != nil {
		return err
	}
	s.set(meshapi.ClusterConfigKey(s.cfg.Cluster.Name), string(cc), false)
	s.heartbeat()

	factory := informers.NewSharedInformerFactoryWithOptions(s.cfg.Kube, 0, informers.WithTransform(stripManagedFields))
	nodes := factory.Core().V1().Nodes().Informer()
	pods := factory.Core().V1().Pods().Informer()
	services := factory.Core().V1().Services().Informer()
	slices := factory.Discovery().V1().EndpointSlices().Informer()
	if err := slices.AddIndexers(cache.Indexers{serviceIndex: sliceServiceIndex}); err != nil {
		return fmt.Errorf("index endpoint slices: %w", err)
	}
	svc := &serviceSource{s: s, services: services.GetStore(), slices: slices.GetIndexer()}
	type watch struct {
		kind     string
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}
	watches := []watch{
		{meshapi.KindNodes, nodes, handler(s.updateNode, s.deleteNode)},
		{meshapi.KindEndpoints, pods, handler(s.updatePod, s.deletePod)},
		{meshapi.KindServices, services, handler(svc.updateService, svc.updateService)},
		{meshapi.KindServices, slices, handler(svc.updateSlice, svc.updateSlice)},
	}
	served, err := serviceExportsServed(s.cfg.MCS.Discovery())
	if err != nil {
		return err
	}
	mcsFactory := mcsinformers.NewSharedInformerFactoryWithOptions(s.cfg.MCS, 0, mcsinformers.WithTransform(stripManagedFields))
	if served {
		exports := mcsFactory.Multicluster().V1beta1().ServiceExports().Informer()
		svc.exports = exports.GetStore()
		svc.status = newExportStatus(s, s.cfg.MCS, svc.exports)
		s.mu.Lock()
		s.status = svc.status
		s.mu.Unlock()
		watches = append(watches, watch{meshapi.KindServices, exports, handler(svc.updateExport, svc.updateExport)})
	} else {
		s.log.WithField("crd", mcsv1beta1.ServiceExportFullName).Warn("ServiceExports are not served in " + mcsv1beta1.GroupVersion.String() + "; no Service is exported (install the MCS CRDs and restart)")
	}
	regs := map[string][]cache.ResourceEventHandlerRegistration{}
	for _, h := range watches {
		reg, err := h.informer.AddEventHandler(h.handler)
		if err != nil {
			return fmt.Errorf("watch %s: %w", h.kind, err)
		}
		regs[h.kind] = append(regs[h.kind], reg)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer factory.Shutdown()
	defer mcsFactory.Shutdown()
	defer s.queue.ShutDown() // before wg.Wait: stops the workers
	factory.Start(ctx.Done())
	mcsFactory.Start(ctx.Done())
	batches := make(chan []string)
	wg.Go(func() { s.dispatch(batches) })
	for range s.cfg.Workers {
		wg.Go(func() {
			for batch := range batches {
				s.writeBatch(ctx, batch)
			}
		})
	}
	for kind, rs := range regs {
		wg.Go(func() {
			synced := make([]cache.InformerSynced, 0, len(rs))
			for _, r := range rs {
				synced = append(synced, r.HasSynced)
			}
			if cache.WaitForCacheSync(ctx.Done(), synced...) {
				s.markListed(kind)
				if kind == meshapi.KindServices && svc.status != nil {
					svc.status.run(ctx)
				}
			}
		})
	}

	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.heartbeat()
		}
	}
}

func handler[T any](update func(T), del func(T)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { callWith(obj, update) },
		UpdateFunc: func(_, obj any) { callWith(obj, update) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			callWith(obj, del)
		},
	}
}

func callWith[T any](obj any, f func(T)) {
	if o, ok := obj.(T); ok {
		f(o)
	}
}

func stripManagedFields(obj any) (any, error) {
	if o, ok := obj.(metav1.ObjectMetaAccessor); ok {
		o.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}

// loadActual reads what etcd holds under podmesh/ at start.
func (s *Syncer) loadActual(ctx context.Context) error {
	resp, err := s.cfg.Etcd.Get(ctx, meshapi.Root, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list etcd keys under %s: %w", meshapi.Root, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		s.actual[k] = string(kv.Value)
		// Until this run writes them, keep the previous run's canaries.
		if strings.HasPrefix(k, meshapi.SyncedPrefix) {
			s.desired[k] = string(kv.Value)
		}
		s.markLocked(k)
	}
	s.log.WithField("keys", len(resp.Kvs)).Info("Loaded existing etcd state")
	return nil
}

func (s *Syncer) heartbeat() {
	s.set(meshapi.HeartbeatKey(s.cfg.Cluster.Name), meshapi.FormatTime(time.Now()), false)
}

func kindOf(key string) string {
	switch {
	case strings.HasPrefix(key, meshapi.NodesPrefix):
		return meshapi.KindNodes
	case strings.HasPrefix(key, meshapi.EndpointsPrefix):
		return meshapi.KindEndpoints
	case strings.HasPrefix(key, meshapi.ServicesPrefix):
		return meshapi.KindServices
	}
	return kindMeta
}

// set records the desired value of key and queues it; with coalesce, not
// sooner than CoalesceDelay after its previous write.
func (s *Syncer) set(key, value string, coalesce bool) {
	s.mu.Lock()
	s.desired[key] = value
	s.markLocked(key)
	wait := s.waitLocked(key, coalesce)
	s.mu.Unlock()
	s.enqueue(key, wait)
}

// unset records that key should not exist and queues it like set.
func (s *Syncer) unset(key string) {
	s.mu.Lock()
	_, had := s.desired[key]
	delete(s.desired, key)
	s.markLocked(key)
	wait := s.waitLocked(key, true)
	s.mu.Unlock()
	if had {
		s.enqueue(key, wait)
	}
}

// waitLocked is how long a changed key must wait before its write: zero when
// it was not written within CoalesceDelay (an idle key goes at once), else
// the rest of that window (a busy key is written once per window, with its
// latest value).
func (s *Syncer) waitLocked(key string, coalesce bool) time.Duration {
	if !coalesce || s.cfg.CoalesceDelay <= 0 {
		return 0
	}
	return time.Until(s.nextWrite[key])
}

func (s *Syncer) enqueue(key string, wait time.Duration) {
	if wait > 0 {
		s.queue.AddAfter(key, wait)
		return
	}
	s.queue.Add(key)
}

// markLocked updates the dirty set for key.
func (s *Syncer) markLocked(key string) {
	kind := kindOf(key)
	want, wantOK := s.desired[key]
	have, haveOK := s.actual[key]
	if wantOK == haveOK && want == have {
		delete(s.dirty[kind], key)
		return
	}
	if s.dirty[kind] == nil {
		s.dirty[kind] = map[string]struct{}{}
	}
	s.dirty[kind][key] = struct{}{}
}

// exported records an object's desired value, or its absence and why.
func (s *Syncer) exported(kind, key string, v any, reason string) {
	s.noteReason(kind, key, reason)
	if v == nil {
		s.unset(key)
		return
	}
	b, err := meshapi.Encode(v)
	if err != nil {
		s.log.WithError(err).WithField("key", key).Error("Cannot encode value")
		return
	}
	s.set(key, string(b), true)
}

func (s *Syncer) noteReason(kind, key, reason string) {
	s.mu.Lock()
	old, had := s.notExported[key]
	if reason == "" {
		delete(s.notExported, key)
	} else {
		s.notExported[key] = reasonKey{kind, reason}
	}
	s.mu.Unlock()
	if had && old.reason == reason {
		return
	}
	if had {
		s.m.NotExported.WithLabelValues(old.kind, old.reason).Dec()
	}
	if reason == "" {
		return
	}
	s.m.NotExported.WithLabelValues(kind, reason).Inc()
	entry := s.log.WithFields(logrus.Fields{"kind": kind, "key": key, "reason": reason})
	switch reason {
	case ReasonHostNetwork, ReasonNoIP, ReasonFinished, ReasonExternalName, ReasonNotExported, ReasonNoService:
		entry.Debug("Not exported")
	default:
		entry.Warn("Not exported")
	}
}

func (s *Syncer) updateNode(n *corev1.Node) {
	v, reason := s.cfg.Cluster.NodeFor(n)
	key := meshapi.NodeKey(s.cfg.Cluster.Name, n.Name)
	if v == nil {
		s.exported(meshapi.KindNodes, key, nil, reason)
		return
	}
	s.exported(meshapi.KindNodes, key, v, "")
}

func (s *Syncer) deleteNode(n *corev1.Node) {
	s.exported(meshapi.KindNodes, meshapi.NodeKey(s.cfg.Cluster.Name, n.Name), nil, "")
}

func (s *Syncer) updatePod(p *corev1.Pod) {
	v, reason := s.cfg.Cluster.EndpointFor(p)
	key := meshapi.EndpointKey(s.cfg.Cluster.Name, p.Namespace, p.Name)
	if v == nil {
		s.exported(meshapi.KindEndpoints, key, nil, reason)
		return
	}
	s.exported(meshapi.KindEndpoints, key, v, "")
}

func (s *Syncer) deletePod(p *corev1.Pod) {
	s.exported(meshapi.KindEndpoints, meshapi.EndpointKey(s.cfg.Cluster.Name, p.Namespace, p.Name), nil, "")
}

// markListed is called once a kind's informers have synced: stale keys of
// the kind are queued for deletion and the canary waits for convergence.
func (s *Syncer) markListed(kind string) {
	s.mu.Lock()
	s.listed[kind] = true
	var stale []string
	for k := range s.dirty[kind] {
		if _, ok := s.desired[k]; !ok {
			stale = append(stale, k)
		}
	}
	s.mu.Unlock()
	s.log.WithFields(logrus.Fields{"kind": kind, "stale": len(stale)}).Info("Kubernetes listing complete")
	for _, k := range stale {
		s.queue.Add(k)
	}
	s.checkConvergence()
}

// checkConvergence queues the canary of every listed kind whose keys are
// all in etcd, and closes Ready once every canary is written.
func (s *Syncer) checkConvergence() {
	now := meshapi.FormatTime(time.Now())
	var canaries, strays []string
	s.mu.Lock()
	allWritten := true
	for _, kind := range meshapi.SyncedKinds {
		key := meshapi.SyncedKey(s.cfg.Cluster.Name, kind)
		switch {
		case !s.canaried[kind] && s.listed[kind] && len(s.dirty[kind]) == 0:
			s.canaried[kind] = true
			s.desired[key] = now
			s.markLocked(key)
			canaries = append(canaries, key)
			allWritten = false
		case !s.canaried[kind]:
			allWritten = false
		default:
			if _, dirty := s.dirty[kindMeta][key]; dirty {
				allWritten = false
			} else {
				s.m.Synced.WithLabelValues(kind).Set(1)
			}
		}
	}
	if allWritten && !s.strayCleanup {
		s.strayCleanup = true
		for k := range s.dirty[kindMeta] {
			if _, ok := s.desired[k]; !ok {
				strays = append(strays, k)
			}
		}
	}
	s.mu.Unlock()
	for _, k := range canaries {
		s.log.WithField("key", k).Info("Kind synced; writing canary")
		s.queue.Add(k)
	}
	if allWritten {
		for _, k := range strays {
			s.queue.Add(k)
		}
		// Several batch writers call this at once; the check-then-close
		// above the lock raced (a double close panicked), so it is done once.
		s.readyOnce.Do(func() {
			s.log.Info("All kinds synced")
			close(s.ready)
		})
	}
}

// Bounds of one write transaction: etcd's default --max-txn-ops is 128 and
// its default request limit 1.5 MiB.
const (
	maxBatchOps   = 128
	maxBatchBytes = 1 << 20
)

// dispatch is the queue's only consumer: it takes every key that is ready,
// up to the batch bounds, and hands the batch to a writer. A key stays
// "processing" in the queue until its batch is written, so no two batches
// ever hold the same key, and a key changed meanwhile is queued again.
func (s *Syncer) dispatch(batches chan<- []string) {
	defer close(batches)
	for {
		key, shutdown := s.queue.Get()
		if shutdown {
			return
		}
		batch, size := []string{key}, s.take(key)
		for len(batch) < maxBatchOps && size < maxBatchBytes && s.queue.Len() > 0 {
			key, shutdown := s.queue.Get() // does not block: this is the only consumer
			if shutdown {
				return
			}
			batch = append(batch, key)
			size += s.take(key)
		}
		batches <- batch
	}
}

// take notes that key is being written now, which opens its next coalescing
// window, and returns the size its write adds to a batch.
func (s *Syncer) take(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.CoalesceDelay > 0 {
		s.nextWrite[key] = time.Now().Add(s.cfg.CoalesceDelay)
	}
	return len(key) + len(s.desired[key])
}

// writeBatch makes etcd hold the desired value of every key of a batch, in
// one transaction, skipping keys whose value etcd already holds.
func (s *Syncer) writeBatch(ctx context.Context, batch []string) {
	type write struct {
		key, value string
		del        bool
	}
	var writes []write
	var ops []clientv3.Op
	s.mu.Lock()
	for _, key := range batch {
		want, wantOK := s.desired[key]
		have, haveOK := s.actual[key]
		switch {
		case wantOK == haveOK && want == have:
			if !wantOK {
				delete(s.nextWrite, key) // set and unset again before its write
			}
			s.m.WritesSkipped.Inc()
			s.queue.Forget(key)
			s.queue.Done(key)
		case wantOK:
			writes = append(writes, write{key: key, value: want})
			ops = append(ops, clientv3.OpPut(key, want))
		default:
			writes = append(writes, write{key: key, del: true})
			ops = append(ops, clientv3.OpDelete(key))
		}
	}
	s.mu.Unlock()
	if len(ops) == 0 {
		return
	}

	_, err := s.cfg.Etcd.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		for _, w := range writes {
			if ctx.Err() == nil {
				s.m.EtcdWriteErrors.WithLabelValues(opName(w.del)).Inc()
				s.queue.AddRateLimited(w.key)
			}
			s.queue.Done(w.key)
		}
		if ctx.Err() == nil {
			s.log.WithError(err).WithField("keys", len(writes)).Warn("etcd write failed; retrying")
		}
		return
	}
	s.mu.Lock()
	status := s.status
	for _, w := range writes {
		if w.del {
			delete(s.actual, w.key)
			delete(s.nextWrite, w.key)
		} else {
			s.actual[w.key] = w.value
		}
		s.markLocked(w.key)
	}
	s.mu.Unlock()
	if status != nil {
		for _, w := range writes {
			if isServiceKey(w.key) {
				status.enqueueKey(w.key)
			}
		}
	}
	for _, w := range writes {
		s.m.EtcdWrites.WithLabelValues(opName(w.del)).Inc()
		s.queue.Forget(w.key)
		s.queue.Done(w.key)
	}
	s.m.EtcdTxns.Inc()
	s.checkConvergence()
}

func opName(del bool) string {
	if del {
		return "delete"
	}
	return "put"
}
