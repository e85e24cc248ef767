package clustermesh

import (
	"maps"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// ServiceSink receives the exported services of every remote, raw as the
// remote published them, from the Mesh's own sessions: clustermesh-
// apiserver's cache tier hands them to the service importer, so that one
// connection per remote serves both (agents never set it). Entries are not
// validated here; the consumer validates them as it would its own reads.
//
// Calls are made under the Mesh's lock, in the order of the desired set's
// (so a withdrawal is never overtaken by an older listing); a sink must not
// block and must not call back into the Mesh.
type ServiceSink interface {
	// SetClusterServices replaces a remote's services with a complete
	// listing of meshapi.ServicesClusterPrefix (key → value): after the
	// session's first full listing and after every batch that changed
	// them. A remote without the serviceExports capability is not listed;
	// it is reported once per session with an empty map. The map is the
	// sink's to keep.
	SetClusterServices(cc *meshapi.ClusterConfig, services map[string][]byte)
	// RemoveClusterServices withdraws a remote's services: its file was
	// removed, or its config was refused or displaced by a conflict.
	RemoveClusterServices(cluster string)
}

// servicesPrefix returns the services prefix a session of cc lists, "" when
// it lists none (no sink, or a remote that does not publish exports).
func (m *Mesh) servicesPrefix(cc *meshapi.ClusterConfig) string {
	if m.opts.Services == nil || !cc.Capabilities.ServiceExports {
		return ""
	}
	return meshapi.ServicesClusterPrefix(cc.Name)
}

// pushServicesLocked hands state's services to the sink when they changed
// since the session last did.
func (m *Mesh) pushServicesLocked(state *clusterState) {
	if m.opts.Services == nil || !state.servicesDirty {
		return
	}
	state.servicesDirty = false
	m.opts.Services.SetClusterServices(state.cfg, maps.Clone(state.services))
}

// removeServicesLocked withdraws a remote's services from the sink.
func (m *Mesh) removeServicesLocked(cluster string) {
	if m.opts.Services != nil {
		m.opts.Services.RemoveClusterServices(cluster)
	}
}
