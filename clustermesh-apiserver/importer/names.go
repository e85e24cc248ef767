package importer

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"strings"
)

// ControllerName names podmesh's importer in every object it owns: the value
// of LabelManagedBy and of the EndpointSlice managed-by label, so Kubernetes'
// own EndpointSlice controllers leave the imported slices alone.
const ControllerName = "importer.podmesh.io"

// Labels and annotations the importer reads and writes.
const (
	// LabelManagedBy marks every ServiceImport, derived Service and
	// EndpointSlice the importer owns; it never touches an object without it.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// LabelEndpointSliceManagedBy is Kubernetes' own ownership label of
	// EndpointSlices.
	LabelEndpointSliceManagedBy = "endpointslice.kubernetes.io/managed-by"
	// LabelServiceName is Kubernetes' label naming a slice's Service: the
	// derived Service, never the exported name (see doc.go).
	LabelServiceName = "kubernetes.io/service-name"
	// LabelMCSServiceName and LabelSourceCluster are the MCS labels CoreDNS
	// indexes imported slices by.
	LabelMCSServiceName = "multicluster.kubernetes.io/service-name"
	LabelSourceCluster  = "multicluster.kubernetes.io/source-cluster"

	// AnnotationDerivedService names the derived Service on a ServiceImport,
	// as the mcs-api reference controllers do.
	AnnotationDerivedService = "multicluster.kubernetes.io/derived-service"
	// AnnotationConflict carries the KEP conflict reasons and the message on
	// a ServiceImport while its exports conflict.
	AnnotationConflict = "podmesh.io/conflict"
	// AnnotationExportTime and AnnotationExportType record, on each imported
	// slice, the export it came from, so that a restarted importer can
	// still resolve conflicts for a cluster it has not reached yet.
	AnnotationExportTime = "podmesh.io/export-time"
	AnnotationExportType = "podmesh.io/export-type"
	// AnnotationExportPorts records the export's service ports (JSON), as
	// the slice's own ports are the cluster's target ports.
	AnnotationExportPorts = "podmesh.io/export-ports"

	// FieldManager is the importer's server-side-apply field manager (the
	// Conflict condition of the local ServiceExport).
	FieldManager = "podmesh-importer"
)

// MaxEndpointsPerSlice bounds one imported EndpointSlice, as Kubernetes'
// EndpointSlice controller does by default.
const MaxEndpointsPerSlice = 100

// DerivedName returns the name of the derived Service of namespace/name. It
// is the name the mcs-api reference controllers use ("derived-" and the
// first ten characters of the lower-case, unpadded base32hex encoding of the
// SHA-256 of "namespace/name"), so tools that know the reference find it.
func DerivedName(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	enc := base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])
	return "derived-" + strings.ToLower(enc)[:10]
}

// sliceName is the deterministic name of one imported slice: readable
// prefix, then a hash of everything that identifies the slice, so two
// imports never collide and a restart finds its own slices by name.
func sliceName(namespace, name, cluster, family string, chunk int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%s/%s/%d", namespace, name, cluster, family, chunk))
	prefix := name
	if len(prefix) > 40 {
		prefix = prefix[:40]
	}
	prefix = strings.TrimRight(prefix, "-.")
	c := cluster
	if len(c) > 16 {
		c = c[:16]
	}
	c = strings.TrimRight(c, "-")
	enc := strings.ToLower(base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:]))[:10]
	return prefix + "-" + c + "-" + enc
}

// Key names one exported service: namespace/name.
type Key struct{ Namespace, Name string }

func (k Key) String() string { return k.Namespace + "/" + k.Name }
