package importer

import (
	"encoding/json"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// The functions in this file are pure: merged exports in, the objects the
// importer wants in Kubernetes out. reconcile.go compares them with what is
// there and writes the difference.

func ownedLabels() map[string]string {
	return map[string]string{LabelManagedBy: ControllerName}
}

// desiredServiceImport is the ServiceImport of m, without spec.ips and
// spec.ipFamilies (they come from the derived Service once it has them).
func desiredServiceImport(m *Merged) *mcsv1beta1.ServiceImport {
	si := &mcsv1beta1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   m.Key.Namespace,
			Name:        m.Key.Name,
			Labels:      ownedLabels(),
			Annotations: map[string]string{},
		},
		Spec: mcsv1beta1.ServiceImportSpec{
			Type:            mcsv1beta1.ServiceImportType(m.Type),
			Ports:           make([]mcsv1beta1.ServicePort, 0, len(m.Ports)),
			SessionAffinity: corev1.ServiceAffinity(m.SessionAffinity),
		},
	}
	if m.Type == meshapi.ServiceTypeClusterSetIP {
		si.Annotations[AnnotationDerivedService] = DerivedName(m.Key.Namespace, m.Key.Name)
	}
	if len(m.Reasons) > 0 {
		si.Annotations[AnnotationConflict] = m.Conflict() + ": " + m.Message
	}
	if m.SessionAffinity == string(corev1.ServiceAffinityClientIP) && m.AffinityTimeout > 0 {
		si.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(m.AffinityTimeout)}}
	}
	for _, p := range m.Ports {
		sp := mcsv1beta1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: p.Port}
		if p.AppProtocol != "" {
			sp.AppProtocol = ptr.To(p.AppProtocol)
		}
		si.Spec.Ports = append(si.Spec.Ports, sp)
	}
	for _, c := range m.Clusters {
		si.Status.Clusters = append(si.Status.Clusters, mcsv1beta1.ClusterStatus{Cluster: c})
	}
	return si
}

// desiredDerivedService is the ClusterIP Service kube-proxy programs for a
// ClusterSetIP import: no selector (its endpoints are the imported slices),
// its ports are the merged service ports; the per-cluster slices carry the
// target ports by port name.
func desiredDerivedService(m *Merged) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: m.Key.Namespace,
			Name:      DerivedName(m.Key.Namespace, m.Key.Name),
			Labels:    ownedLabels(),
		},
		Spec: corev1.ServiceSpec{
			Type:            corev1.ServiceTypeClusterIP,
			SessionAffinity: corev1.ServiceAffinity(m.SessionAffinity),
		},
	}
	svc.Labels[LabelMCSServiceName] = m.Key.Name
	if m.SessionAffinity == string(corev1.ServiceAffinityClientIP) && m.AffinityTimeout > 0 {
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(m.AffinityTimeout)}}
	}
	for _, p := range m.Ports {
		sp := corev1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: p.Port, TargetPort: intstr.FromInt32(p.Port)}
		if p.AppProtocol != "" {
			sp.AppProtocol = ptr.To(p.AppProtocol)
		}
		svc.Spec.Ports = append(svc.Spec.Ports, sp)
	}
	return svc
}

// desiredSlices are the EndpointSlices of one source cluster's export: one
// address family per slice, at most MaxEndpointsPerSlice endpoints each,
// endpoints in address order, names from sliceName.
func desiredSlices(e *Export) []*discoveryv1.EndpointSlice {
	byFamily := map[discoveryv1.AddressType][]meshapi.ServiceEndpoint{}
	for _, ep := range e.Endpoints {
		f := discoveryv1.AddressTypeIPv4
		if ep.IP.Is6() {
			f = discoveryv1.AddressTypeIPv6
		}
		byFamily[f] = append(byFamily[f], ep)
	}
	src := e.EndpointPorts
	if src == nil {
		src = e.Ports
	}
	ports := make([]discoveryv1.EndpointPort, 0, len(src))
	for _, p := range src {
		ep := discoveryv1.EndpointPort{Name: ptr.To(p.Name), Protocol: ptr.To(corev1.Protocol(p.Protocol)), Port: ptr.To(p.Port)}
		if p.AppProtocol != "" {
			ep.AppProtocol = ptr.To(p.AppProtocol)
		}
		ports = append(ports, ep)
	}
	var out []*discoveryv1.EndpointSlice
	for _, f := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		eps := byFamily[f]
		for chunk := 0; chunk*MaxEndpointsPerSlice < len(eps) || (chunk == 0 && len(eps) == 0 && f == discoveryv1.AddressTypeIPv4); chunk++ {
			part := eps[chunk*MaxEndpointsPerSlice : min(len(eps), (chunk+1)*MaxEndpointsPerSlice)]
			out = append(out, sliceFor(e, f, chunk, part, ports))
		}
	}
	return out
}

// sliceFor builds one slice. An export without endpoints still gets one
// empty IPv4 slice, so that the cluster shows up as a source to CoreDNS and
// the slice carries the export's time and type across importer restarts.
func sliceFor(e *Export, f discoveryv1.AddressType, chunk int, eps []meshapi.ServiceEndpoint, ports []discoveryv1.EndpointPort) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: e.Key.Namespace,
			Name:      sliceName(e.Key.Namespace, e.Key.Name, e.Cluster, string(f), chunk),
			Labels: map[string]string{
				LabelManagedBy:              ControllerName,
				LabelEndpointSliceManagedBy: ControllerName,
				LabelServiceName:            DerivedName(e.Key.Namespace, e.Key.Name),
				LabelMCSServiceName:         e.Key.Name,
				LabelSourceCluster:          e.Cluster,
			},
			Annotations: map[string]string{
				AnnotationExportTime:  e.Time.UTC().Format(time.RFC3339Nano),
				AnnotationExportType:  e.Type,
				AnnotationExportPorts: encodePorts(e.Ports),
			},
		},
		AddressType: f,
		Ports:       slices.Clone(ports),
		Endpoints:   make([]discoveryv1.Endpoint, 0, len(eps)),
	}
	for _, ep := range eps {
		out := discoveryv1.Endpoint{
			Addresses: []string{ep.IP.String()},
			Conditions: discoveryv1.EndpointConditions{
				Ready:       ptr.To(ep.Ready),
				Serving:     ptr.To(ep.Serving || ep.Ready),
				Terminating: ptr.To(ep.Terminating),
			},
		}
		if h := dnsHostname(ep); h != "" {
			out.Hostname = ptr.To(h)
		}
		if ep.Node != "" {
			out.NodeName = ptr.To(ep.Node)
		}
		if ep.Zone != "" {
			out.Zone = ptr.To(ep.Zone)
		}
		s.Endpoints = append(s.Endpoints, out)
	}
	return s
}

// exportFromSlices rebuilds what merging needs of a cluster's export from
// the slices a previous run wrote for it: used for a configured cluster the
// importer has not reached since it started, whose slices it keeps as they
// are.
func exportFromSlices(key Key, cluster string, ss []*discoveryv1.EndpointSlice) *Export {
	if len(ss) == 0 {
		return nil
	}
	e := &Export{Cluster: cluster, Key: key, Type: meshapi.ServiceTypeClusterSetIP, SessionAffinity: "None"}
	// An export time that cannot be read sorts last: it never wins.
	e.Time = time.Unix(1<<40, 0)
	annotated := false
	for _, s := range ss {
		if t, err := time.Parse(time.RFC3339Nano, s.Annotations[AnnotationExportTime]); err == nil && t.Before(e.Time) {
			e.Time = t
		}
		if s.Annotations[AnnotationExportType] == meshapi.ServiceTypeHeadless {
			e.Type = meshapi.ServiceTypeHeadless
		}
		if ports, ok := decodePorts(s.Annotations[AnnotationExportPorts]); ok {
			annotated = true
			for _, sp := range ports {
				if !slices.Contains(e.Ports, sp) {
					e.Ports = append(e.Ports, sp)
				}
			}
		}
		for _, p := range s.Ports {
			sp := meshapi.ServicePort{Name: ptr.Deref(p.Name, ""), Protocol: string(ptr.Deref(p.Protocol, corev1.ProtocolTCP)), Port: ptr.Deref(p.Port, 0), AppProtocol: ptr.Deref(p.AppProtocol, "")}
			if sp.Port != 0 && !slices.Contains(e.EndpointPorts, sp) {
				e.EndpointPorts = append(e.EndpointPorts, sp)
			}
		}
	}
	if !annotated {
		// Slices of an importer without target ports: their ports are the
		// service ports.
		e.Ports = slices.Clone(e.EndpointPorts)
	}
	return e
}

// encodePorts renders service ports for AnnotationExportPorts.
func encodePorts(ports []meshapi.ServicePort) string {
	b, err := json.Marshal(ports)
	if err != nil {
		return ""
	}
	return string(b)
}

// decodePorts reads AnnotationExportPorts back; a missing or unreadable
// annotation (slices of an older importer) reports false.
func decodePorts(v string) ([]meshapi.ServicePort, bool) {
	var ports []meshapi.ServicePort
	if v == "" || json.Unmarshal([]byte(v), &ports) != nil {
		return nil, false
	}
	ports, err := checkPorts(ports)
	return ports, err == nil
}

// clusterFromSliceLabels returns the source cluster a slice claims.
func clusterFromSliceLabels(s *discoveryv1.EndpointSlice) string {
	return s.Labels[LabelSourceCluster]
}

// keyOfOwned returns the import key an owned object belongs to: the
// ServiceImport's own name, or the MCS service-name label of a derived
// Service or slice.
func keyOfOwned(namespace, name string, labels map[string]string, isImport bool) (Key, bool) {
	if isImport {
		return Key{namespace, name}, true
	}
	n := labels[LabelMCSServiceName]
	if n == "" {
		return Key{}, false
	}
	return Key{namespace, n}, true
}
