package importer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsscheme "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned/scheme"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1beta1"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

const (
	indexByKey     = "importKey"
	indexByCluster = "sourceCluster"
)

// writer makes Kubernetes match the merged imports while this instance
// leads. It is level-triggered: events only put keys on the queue, and one
// reconcile of a key computes everything of that key from the clusters'
// current state and the informers' caches.
type writer struct {
	imp      *Importer
	log      logrus.FieldLogger
	queue    workqueue.TypedRateLimitingInterface[Key]
	recorder record.EventRecorder

	namespaces corelisters.NamespaceLister
	services   corelisters.ServiceLister
	slices     cache.Indexer
	imports    mcslisters.ServiceImportLister
	exports    mcslisters.ServiceExportLister
}

// write runs the writer until ctx is done.
func (imp *Importer) write(ctx context.Context) error {
	w := &writer{
		imp:   imp,
		log:   imp.log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[Key](), workqueue.TypedRateLimitingQueueConfig[Key]{Name: "podmesh-importer"}),
	}
	owned := labels.SelectorFromSet(ownedLabels()).String()
	kf := informers.NewSharedInformerFactory(imp.opts.Kube, 0)
	of := informers.NewSharedInformerFactoryWithOptions(imp.opts.Kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = owned }))
	mf := mcsinformers.NewSharedInformerFactory(imp.opts.MCS, 0)

	nsInf := kf.Core().V1().Namespaces()
	svcInf := of.Core().V1().Services()
	sliceInf := of.Discovery().V1().EndpointSlices()
	siInf := mf.Multicluster().V1beta1().ServiceImports()
	seInf := mf.Multicluster().V1beta1().ServiceExports()
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{
		indexByKey: func(obj any) ([]string, error) {
			s := obj.(*discoveryv1.EndpointSlice)
			if k, ok := keyOfOwned(s.Namespace, s.Name, s.Labels, false); ok {
				return []string{k.String()}, nil
			}
			return nil, nil
		},
		indexByCluster: func(obj any) ([]string, error) {
			if c := clusterFromSliceLabels(obj.(*discoveryv1.EndpointSlice)); c != "" {
				return []string{c}, nil
			}
			return nil, nil
		},
	}); err != nil {
		return fmt.Errorf("index endpoint slices: %w", err)
	}
	w.namespaces, w.services, w.slices = nsInf.Lister(), svcInf.Lister(), sliceInf.Informer().GetIndexer()
	w.imports, w.exports = siInf.Lister(), seInf.Lister()

	enqueueOwned := func(isImport bool) cache.ResourceEventHandler {
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { w.enqueueObject(obj, isImport) },
			UpdateFunc: func(_, obj any) { w.enqueueObject(obj, isImport) },
			DeleteFunc: func(obj any) { w.enqueueObject(obj, isImport) },
		}
	}
	for _, h := range []struct {
		inf      cache.SharedIndexInformer
		isImport bool
	}{{svcInf.Informer(), false}, {sliceInf.Informer(), false}, {siInf.Informer(), true}, {seInf.Informer(), true}} {
		if _, err := h.inf.AddEventHandler(enqueueOwned(h.isImport)); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.enqueueNamespace(obj) },
		DeleteFunc: func(obj any) { w.enqueueNamespace(obj) },
	}); err != nil {
		return fmt.Errorf("watch namespaces: %w", err)
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: imp.opts.Kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	w.recorder = broadcaster.NewRecorder(mcsscheme.Scheme, corev1.EventSource{Component: FieldManager})

	kf.Start(ctx.Done())
	of.Start(ctx.Done())
	mf.Start(ctx.Done())
	defer func() {
		w.queue.ShutDown()
		kf.Shutdown()
		of.Shutdown()
		mf.Shutdown()
	}()
	synced := make(chan struct{})
	go func() {
		select {
		case <-synced:
		case <-ctx.Done():
		case <-time.After(30 * time.Second):
			w.log.Warn("Informers have not synced after 30s; are the Multi-Cluster Services CRDs installed (daemonset/base/mcs-crds.yaml)?")
		}
	}()
	ok := cache.WaitForCacheSync(ctx.Done(), nsInf.Informer().HasSynced, svcInf.Informer().HasSynced, sliceInf.Informer().HasSynced, siInf.Informer().HasSynced, seInf.Informer().HasSynced)
	close(synced)
	if !ok {
		return ctx.Err()
	}

	imp.mu.Lock()
	imp.kick = func(keys ...Key) {
		for _, k := range keys {
			w.queue.Add(k)
		}
	}
	imp.ownedKeys = w.keysOfCluster
	imp.mu.Unlock()
	defer func() {
		imp.mu.Lock()
		imp.kick, imp.ownedKeys = nil, nil
		imp.mu.Unlock()
	}()
	w.enqueueAll()
	w.log.Info("Writing service imports")

	var wg sync.WaitGroup
	for range imp.opts.Workers {
		wg.Go(func() {
			for w.processNext(ctx) {
			}
		})
	}
	wg.Go(func() { every(ctx, imp.opts.Timing.Resync, w.enqueueAll) })
	<-ctx.Done()
	w.queue.ShutDown()
	wg.Wait()
	return ctx.Err()
}

// enqueueAll queues every key some cluster exports or some owned object
// belongs to: a restart reconciles orphans as well as imports.
func (w *writer) enqueueAll() {
	for _, k := range w.imp.allKeys() {
		w.queue.Add(k)
	}
	for _, obj := range w.slices.List() {
		w.enqueueObject(obj, false)
	}
	svcs, _ := w.services.List(labels.Everything())
	for _, s := range svcs {
		w.enqueueObject(s, false)
	}
	sis, _ := w.imports.List(labels.Everything())
	for _, si := range sis {
		w.enqueueObject(si, true)
	}
}

func (w *writer) enqueueObject(obj any, isImport bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	if k, ok := keyOfOwned(m.GetNamespace(), m.GetName(), m.GetLabels(), isImport); ok {
		w.queue.Add(k)
	}
}

func (w *writer) enqueueNamespace(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	for _, k := range w.imp.allKeys() {
		if k.Namespace == ns.Name {
			w.queue.Add(k)
		}
	}
}

// keysOfCluster lists the keys of the slices that claim cluster as source.
func (w *writer) keysOfCluster(cluster string) []Key {
	objs, _ := w.slices.ByIndex(indexByCluster, cluster)
	var out []Key
	for _, o := range objs {
		s := o.(*discoveryv1.EndpointSlice)
		if k, ok := keyOfOwned(s.Namespace, s.Name, s.Labels, false); ok {
			out = append(out, k)
		}
	}
	return out
}

func (w *writer) processNext(ctx context.Context) bool {
	k, quit := w.queue.Get()
	if quit {
		return false
	}
	defer w.queue.Done(k)
	start := time.Now()
	err := w.reconcile(ctx, k)
	w.imp.m.reconcileSeconds.Observe(time.Since(start).Seconds())
	if err != nil && ctx.Err() == nil {
		w.imp.m.reconcileErrors.Inc()
		w.log.WithError(err).WithField("service", k.String()).Warn("Reconciling service import failed; retrying")
		w.queue.AddRateLimited(k)
		return true
	}
	w.queue.Forget(k)
	return true
}

// reconcile makes the ServiceImport, derived Service and slices of k match
// the clusters' exports. Independent failures are collected, not first-fail.
func (w *writer) reconcile(ctx context.Context, k Key) error {
	exports, states := w.imp.snapshot(k)
	actual := w.slicesOf(k)
	byCluster := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range actual {
		c := clusterFromSliceLabels(s)
		byCluster[c] = append(byCluster[c], s)
	}
	contrib := slices.Clone(exports)
	for c, ss := range byCluster {
		if states[c] == statePending {
			if e := exportFromSlices(k, c, ss); e != nil {
				contrib = append(contrib, e)
			}
		}
	}
	ns, err := w.namespaces.Get(k.Namespace)
	nsOK := err == nil && ns.DeletionTimestamp == nil
	var m *Merged
	if nsOK {
		m = Merge(contrib)
	}

	si, err := w.imports.ServiceImports(k.Namespace).Get(k.Name)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("read ServiceImport: %w", err)
	}
	if err != nil {
		si = nil
	}
	if si != nil && si.Labels[LabelManagedBy] != ControllerName {
		if m != nil {
			w.imp.m.foreign.Inc()
			w.log.WithField("service", k.String()).Warn("A ServiceImport podmesh does not manage has this name; not importing it")
		}
		return nil
	}

	var errs []error
	if m == nil {
		for _, s := range actual {
			errs = append(errs, w.deleteSlice(ctx, s))
		}
		errs = append(errs, w.deleteDerived(ctx, k))
		if si != nil {
			errs = append(errs, w.delete(ctx, "serviceimport", func() error {
				return w.imp.opts.MCS.MulticlusterV1beta1().ServiceImports(k.Namespace).Delete(ctx, k.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &si.UID}})
			}))
		}
		return errors.Join(errs...)
	}

	want := desiredServiceImport(m)
	var derived *corev1.Service
	if m.Type == meshapi.ServiceTypeClusterSetIP {
		derived, _ = w.services.Services(k.Namespace).Get(DerivedName(k.Namespace, k.Name))
		if derived != nil && derived.Labels[LabelManagedBy] == ControllerName {
			setIPs(want, derived)
		}
	}
	si, err = w.ensureServiceImport(ctx, si, want)
	if err != nil {
		return err
	}
	if m.Type == meshapi.ServiceTypeClusterSetIP {
		derived, err = w.ensureDerived(ctx, m, si)
		if err != nil {
			errs = append(errs, err)
		} else if setIPs(want, derived) {
			if si, err = w.ensureServiceImport(ctx, si, want); err != nil {
				errs = append(errs, err)
			}
		}
	} else {
		errs = append(errs, w.deleteDerived(ctx, k))
	}

	// Slices: the included synced clusters get exactly their desired
	// slices; pending clusters keep theirs; every other slice goes.
	byName := map[string]*discoveryv1.EndpointSlice{}
	for _, s := range actual {
		byName[s.Name] = s
	}
	keep := map[string]bool{}
	for _, e := range exports {
		if !slices.Contains(m.Clusters, e.Cluster) {
			continue
		}
		for _, s := range desiredSlices(e) {
			keep[s.Name] = true
			errs = append(errs, w.ensureSlice(ctx, byName[s.Name], s))
		}
	}
	for _, s := range actual {
		if keep[s.Name] || states[clusterFromSliceLabels(s)] == statePending {
			continue
		}
		errs = append(errs, w.deleteSlice(ctx, s))
	}

	if si != nil {
		errs = append(errs, w.ensureStatus(ctx, si, want))
	}
	errs = append(errs, w.ensureConflictCondition(ctx, k, m, exports))
	return errors.Join(errs...)
}

// setIPs puts the derived Service's cluster IPs and families into the
// ServiceImport's spec and reports whether it has any.
func setIPs(si *mcsv1beta1.ServiceImport, svc *corev1.Service) bool {
	si.Spec.IPs = nil
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != "" && ip != corev1.ClusterIPNone {
			si.Spec.IPs = append(si.Spec.IPs, ip)
		}
	}
	si.Spec.IPFamilies = slices.Clone(svc.Spec.IPFamilies)
	return len(si.Spec.IPs) > 0
}

func (w *writer) slicesOf(k Key) []*discoveryv1.EndpointSlice {
	objs, _ := w.slices.ByIndex(indexByKey, k.String())
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*discoveryv1.EndpointSlice))
	}
	return out
}

func (w *writer) count(kind, verb string) { w.imp.m.writes.WithLabelValues(kind, verb).Inc() }

// delete runs a delete call; NotFound and a failed UID precondition (the
// object is gone or replaced) are success.
func (w *writer) delete(_ context.Context, kind string, call func() error) error {
	w.count(kind, "delete")
	err := call()
	if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return fmt.Errorf("delete %s: %w", kind, err)
}

func (w *writer) deleteSlice(ctx context.Context, s *discoveryv1.EndpointSlice) error {
	return w.delete(ctx, "endpointslice", func() error {
		return w.imp.opts.Kube.DiscoveryV1().EndpointSlices(s.Namespace).Delete(ctx, s.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}})
	})
}

func (w *writer) deleteDerived(ctx context.Context, k Key) error {
	svc, err := w.services.Services(k.Namespace).Get(DerivedName(k.Namespace, k.Name))
	if err != nil || svc.Labels[LabelManagedBy] != ControllerName {
		return nil
	}
	return w.delete(ctx, "service", func() error {
		return w.imp.opts.Kube.CoreV1().Services(k.Namespace).Delete(ctx, svc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &svc.UID}})
	})
}

// ensureServiceImport creates want or updates the spec, labels and
// annotations of the existing one; it returns the object as stored.
func (w *writer) ensureServiceImport(ctx context.Context, cur, want *mcsv1beta1.ServiceImport) (*mcsv1beta1.ServiceImport, error) {
	api := w.imp.opts.MCS.MulticlusterV1beta1().ServiceImports(want.Namespace)
	if cur == nil {
		w.count("serviceimport", "create")
		created, err := api.Create(ctx, want, metav1.CreateOptions{FieldManager: FieldManager})
		if err != nil {
			return nil, fmt.Errorf("create ServiceImport: %w", err)
		}
		if c := want.Annotations[AnnotationConflict]; c != "" {
			w.recorder.Event(created, corev1.EventTypeWarning, "ExportConflict", c)
		}
		return created, nil
	}
	if apiequality.Semantic.DeepEqual(cur.Spec, want.Spec) && ownedMetaEqual(cur.ObjectMeta, want.ObjectMeta, AnnotationDerivedService, AnnotationConflict) {
		return cur, nil
	}
	next := cur.DeepCopy()
	next.Spec = want.Spec
	mergeOwnedMeta(&next.ObjectMeta, want.ObjectMeta, AnnotationDerivedService, AnnotationConflict)
	w.count("serviceimport", "update")
	updated, err := api.Update(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager})
	if err != nil {
		return nil, fmt.Errorf("update ServiceImport: %w", err)
	}
	if c := want.Annotations[AnnotationConflict]; c != "" && c != cur.Annotations[AnnotationConflict] {
		w.recorder.Event(updated, corev1.EventTypeWarning, "ExportConflict", c)
	}
	return updated, nil
}

func (w *writer) ensureStatus(ctx context.Context, cur, want *mcsv1beta1.ServiceImport) error {
	if apiequality.Semantic.DeepEqual(cur.Status.Clusters, want.Status.Clusters) {
		return nil
	}
	next := cur.DeepCopy()
	next.Status.Clusters = want.Status.Clusters
	w.count("serviceimport", "update-status")
	if _, err := w.imp.opts.MCS.MulticlusterV1beta1().ServiceImports(cur.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("update ServiceImport status: %w", err)
	}
	return nil
}

// ensureDerived creates or updates the derived Service, owned by si so
// that it goes with the ServiceImport. A Service of that name podmesh does
// not manage is never touched.
func (w *writer) ensureDerived(ctx context.Context, m *Merged, si *mcsv1beta1.ServiceImport) (*corev1.Service, error) {
	want := desiredDerivedService(m)
	want.OwnerReferences = []metav1.OwnerReference{{
		APIVersion: mcsv1beta1.GroupVersion.String(), Kind: "ServiceImport", Name: si.Name, UID: si.UID,
	}}
	api := w.imp.opts.Kube.CoreV1().Services(want.Namespace)
	cur, err := w.services.Services(want.Namespace).Get(want.Name)
	if apierrors.IsNotFound(err) {
		w.count("service", "create")
		created, err := api.Create(ctx, want, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create derived Service %s/%s: a Service podmesh does not manage has the name: %w", want.Namespace, want.Name, err)
		}
		if err != nil {
			return nil, fmt.Errorf("create derived Service %s/%s: %w", want.Namespace, want.Name, err)
		}
		return created, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read derived Service: %w", err)
	}
	if derivedEqual(cur, want) {
		return cur, nil
	}
	next := cur.DeepCopy()
	next.Spec.Ports = want.Spec.Ports
	next.Spec.SessionAffinity = want.Spec.SessionAffinity
	next.Spec.SessionAffinityConfig = want.Spec.SessionAffinityConfig
	next.OwnerReferences = want.OwnerReferences
	mergeOwnedMeta(&next.ObjectMeta, want.ObjectMeta)
	w.count("service", "update")
	updated, err := api.Update(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager})
	if err != nil {
		return nil, fmt.Errorf("update derived Service %s/%s: %w", want.Namespace, want.Name, err)
	}
	return updated, nil
}

func derivedEqual(cur, want *corev1.Service) bool {
	if len(cur.Spec.Ports) != len(want.Spec.Ports) || cur.Spec.SessionAffinity != want.Spec.SessionAffinity ||
		!ownedMetaEqual(cur.ObjectMeta, want.ObjectMeta) || !apiequality.Semantic.DeepEqual(cur.OwnerReferences, want.OwnerReferences) {
		return false
	}
	if want.Spec.SessionAffinityConfig != nil && !apiequality.Semantic.DeepEqual(cur.Spec.SessionAffinityConfig, want.Spec.SessionAffinityConfig) {
		return false
	}
	for i, p := range want.Spec.Ports {
		c := cur.Spec.Ports[i]
		if c.Name != p.Name || c.Protocol != p.Protocol || c.Port != p.Port || c.TargetPort != p.TargetPort || ptr.Deref(c.AppProtocol, "") != ptr.Deref(p.AppProtocol, "") {
			return false
		}
	}
	return true
}

// ensureSlice creates want or makes cur equal to it. A slice of that name
// without podmesh's label is never touched (Create fails on it).
func (w *writer) ensureSlice(ctx context.Context, cur, want *discoveryv1.EndpointSlice) error {
	api := w.imp.opts.Kube.DiscoveryV1().EndpointSlices(want.Namespace)
	if cur == nil {
		w.count("endpointslice", "create")
		_, err := api.Create(ctx, want, metav1.CreateOptions{FieldManager: FieldManager})
		if apierrors.IsAlreadyExists(err) {
			// Either our own (the cache lags) or a stranger's: the next
			// reconcile, from the cache, tells.
			return fmt.Errorf("create EndpointSlice %s/%s: %w", want.Namespace, want.Name, err)
		}
		if err != nil {
			return fmt.Errorf("create EndpointSlice %s/%s: %w", want.Namespace, want.Name, err)
		}
		return nil
	}
	if cur.AddressType == want.AddressType && apiequality.Semantic.DeepEqual(cur.Endpoints, want.Endpoints) &&
		apiequality.Semantic.DeepEqual(cur.Ports, want.Ports) && maps.Equal(cur.Labels, want.Labels) &&
		ownedMetaEqual(cur.ObjectMeta, want.ObjectMeta, AnnotationExportTime, AnnotationExportType, AnnotationExportPorts) {
		return nil
	}
	next := cur.DeepCopy()
	next.Endpoints, next.Ports, next.Labels = want.Endpoints, want.Ports, want.Labels
	mergeOwnedMeta(&next.ObjectMeta, want.ObjectMeta, AnnotationExportTime, AnnotationExportType, AnnotationExportPorts)
	w.count("endpointslice", "update")
	if _, err := api.Update(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("update EndpointSlice %s/%s: %w", want.Namespace, want.Name, err)
	}
	return nil
}

// ownedMetaEqual compares the labels of want and the named annotations.
func ownedMetaEqual(cur, want metav1.ObjectMeta, annotations ...string) bool {
	for k, v := range want.Labels {
		if cur.Labels[k] != v {
			return false
		}
	}
	for _, a := range annotations {
		cv, cok := cur.Annotations[a]
		wv, wok := want.Annotations[a]
		if cok != wok || cv != wv {
			return false
		}
	}
	return true
}

func mergeOwnedMeta(dst *metav1.ObjectMeta, want metav1.ObjectMeta, annotations ...string) {
	if dst.Labels == nil {
		dst.Labels = map[string]string{}
	}
	maps.Copy(dst.Labels, want.Labels)
	for _, a := range annotations {
		if v, ok := want.Annotations[a]; ok {
			if dst.Annotations == nil {
				dst.Annotations = map[string]string{}
			}
			dst.Annotations[a] = v
		} else {
			delete(dst.Annotations, a)
		}
	}
}

// ensureConflictCondition sets the Conflict condition of the local
// ServiceExport of k, when the local cluster exports k, by server-side
// apply of that one condition with podmesh-importer as field manager: the
// exporter's Valid and Ready conditions stay its own.
func (w *writer) ensureConflictCondition(ctx context.Context, k Key, m *Merged, exports []*Export) error {
	local := slices.ContainsFunc(exports, func(e *Export) bool { return e.Cluster == w.imp.opts.LocalCluster })
	if !local {
		return nil
	}
	se, err := w.exports.ServiceExports(k.Namespace).Get(k.Name)
	if err != nil {
		return nil // not there (yet): its creation queues k again
	}
	status, reason, msg := metav1.ConditionFalse, ReasonNoConflicts, "no conflicting exports of this service in the clusterset"
	if len(m.Reasons) > 0 {
		status, reason = metav1.ConditionTrue, m.Conflict()
		msg = fmt.Sprintf("oldest export is %s's (%s): %s", m.Oldest, m.OldestTime.UTC().Format(time.RFC3339), m.Message)
	}
	if len(msg) > 32768 {
		msg = msg[:32768]
	}
	transition := metav1.Now()
	if cur := meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict)); cur != nil {
		if cur.Status == status && cur.Reason == reason && cur.Message == msg && cur.ObservedGeneration == se.Generation {
			return nil
		}
		if cur.Status == status {
			transition = cur.LastTransitionTime
		}
	}
	body, err := json.Marshal(map[string]any{
		"apiVersion": mcsv1beta1.GroupVersion.String(),
		"kind":       "ServiceExport",
		"metadata":   map[string]any{"name": k.Name, "namespace": k.Namespace},
		"status": map[string]any{"conditions": []metav1.Condition{{
			Type: string(mcsv1beta1.ServiceExportConditionConflict), Status: status, Reason: reason, Message: msg,
			ObservedGeneration: se.Generation, LastTransitionTime: transition,
		}}},
	})
	if err != nil {
		return fmt.Errorf("encode Conflict condition: %w", err)
	}
	w.count("serviceexport", "apply-status")
	_, err = w.imp.opts.MCS.MulticlusterV1beta1().ServiceExports(k.Namespace).Patch(ctx, k.Name, types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true)}, "status")
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("apply Conflict condition of ServiceExport %s: %w", k, err)
	}
	if status == metav1.ConditionTrue {
		w.recorder.Event(se, corev1.EventTypeWarning, reason, msg)
	}
	return nil
}
