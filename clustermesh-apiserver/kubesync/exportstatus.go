package kubesync

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// ExportFieldManager is the server-side apply field manager under which the
// exporter writes the ServiceExport conditions it owns (Valid, Ready). The
// importer owns Conflict under its own manager; neither touches the other's.
const ExportFieldManager = "podmesh-exporter"

// exportStatus keeps the Valid and Ready conditions of every ServiceExport
// in step with what the sync publishes. It is level-triggered like the rest:
// a key says which export to look at; the worker computes the conditions from
// the sync's state and writes only when they differ from what the
// ServiceExport (in the informer cache) already says.
type exportStatus struct {
	s       *Syncer
	client  mcsclient.Interface
	exports cache.Store
	queue   workqueue.TypedRateLimitingInterface[string] // namespace/name
	// writtenOn is, per export, the resourceVersion of the cached object a
	// write was computed from. While the cache still holds that version it
	// has not seen the write yet, and the export is not written again (the
	// informer's update event wakes it once it has). Only the worker uses it.
	writtenOn map[string]string
}

func newExportStatus(s *Syncer, client mcsclient.Interface, exports cache.Store) *exportStatus {
	return &exportStatus{
		s: s, client: client, exports: exports, writtenOn: map[string]string{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{},
		),
	}
}

func (e *exportStatus) enqueue(id string) { e.queue.Add(id) }

// enqueueKey wakes the export of a service key the sync has just written.
func (e *exportStatus) enqueueKey(key string) {
	parts, err := meshapi.ParseServiceKey(key)
	if err == nil {
		e.enqueue(parts.Namespace + "/" + parts.Name)
	}
}

// run writes conditions until ctx is done. Call it once the informers have
// synced: before that a missing Service may only be not listed yet.
func (e *exportStatus) run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		e.queue.ShutDown()
	}()
	for {
		id, shutdown := e.queue.Get()
		if shutdown {
			return
		}
		if err := e.sync(ctx, id); err != nil {
			if ctx.Err() == nil {
				e.s.m.ExportStatusWrites.WithLabelValues("error").Inc()
				e.s.log.WithError(err).WithField("serviceexport", id).Warn("Cannot write ServiceExport status; retrying")
				e.queue.AddRateLimited(id)
			}
		} else {
			e.queue.Forget(id)
		}
		e.queue.Done(id)
	}
}

func (e *exportStatus) sync(ctx context.Context, id string) error {
	obj, exists, err := e.exports.GetByKey(id)
	if err != nil || !exists {
		delete(e.writtenOn, id)
		return nil // gone: nothing to write on
	}
	se := obj.(*mcsv1beta1.ServiceExport)
	if rv, ok := e.writtenOn[id]; ok && rv == se.ResourceVersion {
		return nil
	}
	want, ok := e.s.exportConditions(se)
	if !ok || !conditionsDiffer(se.Status.Conditions, want) {
		return nil
	}
	now := metav1.NewTime(time.Now())
	for i := range want {
		if old := meta.FindStatusCondition(se.Status.Conditions, want[i].Type); old != nil && old.Status == want[i].Status {
			want[i].LastTransitionTime = old.LastTransitionTime
		} else {
			want[i].LastTransitionTime = now
		}
	}
	body, err := json.Marshal(map[string]any{
		"apiVersion": mcsv1beta1.GroupVersion.String(),
		"kind":       mcsv1beta1.ServiceExportKindName,
		"metadata":   map[string]string{"namespace": se.Namespace, "name": se.Name},
		"status":     map[string]any{"conditions": want},
	})
	if err != nil {
		return fmt.Errorf("encode status of ServiceExport %s: %w", id, err)
	}
	written, err := e.client.MulticlusterV1beta1().ServiceExports(se.Namespace).Patch(ctx, se.Name, types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: ExportFieldManager, Force: ptr.To(true)}, "status")
	if err != nil {
		return fmt.Errorf("apply status of ServiceExport %s: %w", id, err)
	}
	if written.ResourceVersion != se.ResourceVersion {
		// A no-op apply (the cache was behind) changes no version and
		// brings no event; then nothing is waited for.
		e.writtenOn[id] = se.ResourceVersion
	}
	e.s.m.ExportStatusWrites.WithLabelValues("ok").Inc()
	e.s.log.WithFields(logrus.Fields{"serviceexport": id, "valid": want[0].Reason, "ready": want[1].Reason}).Debug("ServiceExport status written")
	return nil
}

// conditionsDiffer reports whether any wanted condition is missing from have
// or says something else (status, reason, message, observed generation).
func conditionsDiffer(have, want []metav1.Condition) bool {
	for _, w := range want {
		h := meta.FindStatusCondition(have, w.Type)
		if h == nil || h.Status != w.Status || h.Reason != w.Reason || h.Message != w.Message || h.ObservedGeneration != w.ObservedGeneration {
			return true
		}
	}
	return false
}

// exportConditions returns the Valid and Ready conditions of a ServiceExport
// from what the sync knows of its service key; false when the sync has not
// looked at the service since the export appeared (a refresh is coming).
func (s *Syncer) exportConditions(se *mcsv1beta1.ServiceExport) ([]metav1.Condition, bool) {
	key := meshapi.ServiceKey(s.cfg.Cluster.Name, se.Namespace, se.Name)
	s.mu.Lock()
	reason := s.notExported[key].reason
	_, inEtcd := s.actual[key]
	_, desired := s.desired[key]
	s.mu.Unlock()

	cond := func(t mcsv1beta1.ServiceExportConditionType, status metav1.ConditionStatus, r mcsv1beta1.ServiceExportConditionReason, msg string) metav1.Condition {
		return metav1.Condition{Type: string(t), Status: status, Reason: string(r), Message: msg, ObservedGeneration: se.Generation}
	}
	notReady := cond(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonFailed, "not exported: the export is not valid")
	switch reason {
	case ReasonNotExported:
		return nil, false
	case ReasonNoService:
		return []metav1.Condition{
			cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonNoService,
				fmt.Sprintf("Service %s/%s does not exist", se.Namespace, se.Name)),
			notReady,
		}, true
	case ReasonExternalName:
		return []metav1.Condition{
			cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonInvalidServiceType,
				"Service of type ExternalName cannot be exported"),
			notReady,
		}, true
	}
	valid := cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonValid, "Service can be exported")
	switch {
	case reason != "":
		return []metav1.Condition{valid, cond(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonFailed,
			fmt.Sprintf("not exported (%s): it exceeds the bounds of podmesh's wire format, e.g. more than %d endpoints or %d ports", reason, meshapi.MaxServiceEndpoints, meshapi.MaxServicePorts))}, true
	case !desired:
		return nil, false // not computed yet
	case inEtcd:
		return []metav1.Condition{valid, cond(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonExported,
			"Service is published to the clusterset")}, true
	default:
		return []metav1.Condition{valid, cond(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonPending,
			"waiting to be published")}, true
	}
}

// isServiceKey reports whether key is one of this package's service keys.
func isServiceKey(key string) bool { return strings.HasPrefix(key, meshapi.ServicesPrefix) }
