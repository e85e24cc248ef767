package clustermesh

import (
	"errors"
	"strings"

	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Reasons an entry is invalid, as metric label values.
const (
	ReasonInvalidKey     = "invalid_key"
	ReasonTooLarge       = "too_large"
	ReasonMissingField   = "missing_field"
	ReasonInvalidName    = "invalid_name"
	ReasonInvalidAddress = "invalid_address"
	ReasonInvalidPrefix  = "invalid_prefix"
	ReasonOutOfRange     = "out_of_range"
	ReasonMismatch       = "mismatch"
	ReasonUnsupported    = "unsupported"
	ReasonMalformed      = "malformed"
)

// InvalidReason classifies a decode or validation error of meshapi.
func InvalidReason(err error) string {
	for _, c := range []struct {
		err    error
		reason string
	}{
		{meshapi.ErrInvalidKey, ReasonInvalidKey},
		{meshapi.ErrTooLarge, ReasonTooLarge},
		{meshapi.ErrMissingField, ReasonMissingField},
		{meshapi.ErrOutOfRange, ReasonOutOfRange},
		{meshapi.ErrMismatch, ReasonMismatch},
		{meshapi.ErrInvalidPrefix, ReasonInvalidPrefix},
		{meshapi.ErrInvalidAddress, ReasonInvalidAddress},
		{meshapi.ErrInvalidName, ReasonInvalidName},
		{meshapi.ErrUnsupported, ReasonUnsupported},
	} {
		if errors.Is(err, c.err) {
			return c.reason
		}
	}
	return ReasonMalformed
}

// invalidEntry is why one key was refused.
type invalidEntry struct {
	reason string
	err    error
}

// clusterState is what one session has read from a remote: validated nodes
// and endpoints, and the keys it refused. It is owned by the session's
// goroutine; nothing in it is shared.
type clusterState struct {
	cfg       *meshapi.ClusterConfig
	nodes     map[string]*meshapi.Node     // by node name
	endpoints map[string]*meshapi.Endpoint // by etcd key
	invalid   map[string]invalidEntry      // by etcd key
	listed    map[string]bool              // by watched prefix
	// services holds the raw service entries (by etcd key) when the
	// session lists them (Options.Services), else nil; servicesDirty says
	// they changed since they were last handed over.
	services      map[string][]byte
	servicesDirty bool
}

func newClusterState(cfg *meshapi.ClusterConfig) *clusterState {
	return &clusterState{
		cfg:       cfg,
		nodes:     make(map[string]*meshapi.Node),
		endpoints: make(map[string]*meshapi.Endpoint),
		invalid:   make(map[string]invalidEntry),
		listed:    make(map[string]bool),
	}
}

// apply folds one event in. It returns the entry error when the event
// carried an invalid entry (which is then dropped and recorded), else nil.
func (s *clusterState) apply(prefix string, ev kvstore.Event) error {
	if ev.Kind == kvstore.Listed {
		s.listed[prefix] = true
		return nil
	}
	if s.services != nil && strings.HasPrefix(ev.Key, meshapi.ServicesPrefix) {
		s.applyService(ev)
		return nil
	}
	isNode := strings.HasPrefix(ev.Key, meshapi.NodesPrefix)
	delete(s.invalid, ev.Key)
	if isNode {
		return s.applyNode(ev)
	}
	return s.applyEndpoint(ev)
}

func (s *clusterState) applyNode(ev kvstore.Event) error {
	parts, err := meshapi.ParseNodeKey(ev.Key)
	if err == nil && ev.Kind == kvstore.Delete {
		delete(s.nodes, parts.Node)
		return nil
	}
	if err != nil {
		if ev.Kind == kvstore.Delete {
			return nil
		}
		return s.refuse(ev.Key, err)
	}
	n, err := meshapi.DecodeNode(ev.Value)
	if err == nil {
		err = meshapi.ValidateNodeFor(parts, n, s.cfg)
	}
	if err != nil {
		delete(s.nodes, parts.Node) // what the remote says now is a lie: withdraw
		return s.refuse(ev.Key, err)
	}
	s.nodes[parts.Node] = n
	return nil
}

func (s *clusterState) applyEndpoint(ev kvstore.Event) error {
	if ev.Kind == kvstore.Delete {
		delete(s.endpoints, ev.Key)
		return nil
	}
	parts, err := meshapi.ParseEndpointKey(ev.Key)
	if err != nil {
		return s.refuse(ev.Key, err)
	}
	e, err := meshapi.DecodeEndpoint(ev.Value)
	if err == nil {
		err = meshapi.ValidateEndpointFor(parts, e, s.cfg)
	}
	if err != nil {
		delete(s.endpoints, ev.Key)
		return s.refuse(ev.Key, err)
	}
	s.endpoints[ev.Key] = e
	return nil
}

// applyService keeps a service entry raw: its consumer validates it.
func (s *clusterState) applyService(ev kvstore.Event) {
	s.servicesDirty = true
	if ev.Kind == kvstore.Delete {
		delete(s.services, ev.Key)
		return
	}
	s.services[ev.Key] = ev.Value
}

func (s *clusterState) refuse(key string, err error) error {
	s.invalid[key] = invalidEntry{reason: InvalidReason(err), err: err}
	return err
}

// invalidByReason counts the keys currently refused, by reason.
func (s *clusterState) invalidByReason() map[string]int {
	out := make(map[string]int)
	for _, e := range s.invalid {
		out[e.reason]++
	}
	return out
}
