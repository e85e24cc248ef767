package kubesync

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// serviceSource turns Service, EndpointSlice and ServiceExport events into
// service keys, and wakes the ServiceExport status writer.
type serviceSource struct {
	s        *Syncer
	services cache.Store
	slices   cache.Indexer
	// exports is nil when the ServiceExport CRD is not installed: then no
	// Service is exported.
	exports cache.Store
	status  *exportStatus // nil when exports is nil
}

func sliceServiceIndex(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + name}, nil
}

func (v *serviceSource) updateService(svc *corev1.Service) { v.refresh(svc.Namespace, svc.Name) }

func (v *serviceSource) updateExport(se *mcsv1beta1.ServiceExport) { v.refresh(se.Namespace, se.Name) }

func (v *serviceSource) updateSlice(es *discoveryv1.EndpointSlice) {
	if name := es.Labels[discoveryv1.LabelServiceName]; name != "" {
		v.refresh(es.Namespace, name)
	}
}

// refresh recomputes one service from the informer caches (level-triggered:
// the event only says which service to look at). A Service is published
// only while a ServiceExport of the same namespace/name exists.
func (v *serviceSource) refresh(namespace, name string) {
	key := meshapi.ServiceKey(v.s.cfg.Cluster.Name, namespace, name)
	out, reason := v.compute(namespace, name)
	if out == nil {
		v.s.exported(meshapi.KindServices, key, nil, reason)
	} else {
		v.s.exported(meshapi.KindServices, key, out, "")
	}
	if v.status != nil {
		v.status.enqueue(namespace + "/" + name)
	}
}

func (v *serviceSource) compute(namespace, name string) (*meshapi.Service, string) {
	id := namespace + "/" + name
	obj, haveService, err := v.services.GetByKey(id)
	if err != nil {
		haveService = false
	}
	var export *mcsv1beta1.ServiceExport
	if v.exports != nil {
		if o, ok, err := v.exports.GetByKey(id); err == nil && ok {
			export = o.(*mcsv1beta1.ServiceExport)
		}
	}
	switch {
	case export == nil && !haveService:
		return nil, "" // nothing of that name any more
	case export == nil:
		return nil, ReasonNotExported
	case !haveService:
		return nil, ReasonNoService
	}
	objs, err := v.slices.ByIndex(serviceIndex, id)
	if err != nil {
		// Cannot happen: the index is registered before the informer starts.
		v.s.log.WithError(err).WithField("service", id).Error("Cannot look up endpoint slices")
		return nil, ReasonInvalid
	}
	slices := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		slices = append(slices, o.(*discoveryv1.EndpointSlice))
	}
	return v.s.cfg.Cluster.ServiceFor(export.CreationTimestamp.Time, obj.(*corev1.Service), slices)
}

// serviceExportsServed reports whether the API server serves ServiceExports
// in the version this package reads and writes (v1beta1, the stored one).
func serviceExportsServed(d discovery.DiscoveryInterface) (bool, error) {
	list, err := d.ServerResourcesForGroupVersion(mcsv1beta1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", mcsv1beta1.GroupVersion, err)
	}
	for _, r := range list.APIResources {
		if r.Name == mcsv1beta1.ServiceExportPluralName {
			return true, nil
		}
	}
	return false, nil
}
