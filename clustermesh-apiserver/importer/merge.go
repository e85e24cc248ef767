package importer

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// Conflict reasons of KEP-1645 (the ServiceExport Conflict condition).
const (
	ReasonPortConflict                  = "PortConflict"
	ReasonTypeConflict                  = "TypeConflict"
	ReasonSessionAffinityConflict       = "SessionAffinityConflict"
	ReasonSessionAffinityConfigConflict = "SessionAffinityConfigConflict"
	ReasonNoConflicts                   = "NoConflicts"
)

// Merged is the clusterset's view of one exported namespace/name, resolved
// by KEP-1645's rules: the oldest export (ties broken by cluster name, so
// every cluster resolves alike) decides type and session affinity; ports are
// the union, where a port that clashes with one already taken (same name
// with another number or protocol, or same number and protocol under another
// name) is left out.
type Merged struct {
	Key             Key
	Type            string
	Ports           []meshapi.ServicePort
	SessionAffinity string
	AffinityTimeout int32
	IPFamilies      []string
	// Oldest is the cluster whose export won.
	Oldest     string
	OldestTime time.Time
	// Clusters contribute endpoints (sorted); a cluster whose export has
	// another type than the winner's is not among them.
	Clusters []string
	// Reasons are the conflict reasons found (sorted, unique); Message
	// says which cluster differs in what.
	Reasons []string
	Message string
}

// Conflict renders Reasons as the Conflict condition's reason (KEP: joined
// with commas), or NoConflicts.
func (m *Merged) Conflict() string {
	if len(m.Reasons) == 0 {
		return ReasonNoConflicts
	}
	return strings.Join(m.Reasons, ",")
}

// Merge resolves the exports of one namespace/name. It returns nil when
// there is none. exports may be in any order; Merge does not modify them.
func Merge(exports []*Export) *Merged {
	if len(exports) == 0 {
		return nil
	}
	sorted := slices.Clone(exports)
	slices.SortFunc(sorted, func(a, b *Export) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Cluster, b.Cluster)
	})
	w := sorted[0]
	m := &Merged{
		Key:             w.Key,
		Type:            w.Type,
		Ports:           slices.Clone(w.Ports),
		SessionAffinity: w.SessionAffinity,
		AffinityTimeout: w.AffinityTimeout,
		IPFamilies:      slices.Clone(w.IPFamilies),
		Oldest:          w.Cluster,
		OldestTime:      w.Time,
		Clusters:        []string{w.Cluster},
	}
	reasons := map[string]bool{}
	var msgs []string
	for _, e := range sorted[1:] {
		if e.Type != w.Type {
			reasons[ReasonTypeConflict] = true
			msgs = append(msgs, fmt.Sprintf("%s exports type %s, the oldest export (%s) is %s; %s is not imported", e.Cluster, e.Type, w.Cluster, w.Type, e.Cluster))
			continue
		}
		m.Clusters = append(m.Clusters, e.Cluster)
		for _, p := range e.Ports {
			if clash, ok := portClash(m.Ports, p); ok {
				reasons[ReasonPortConflict] = true
				msgs = append(msgs, fmt.Sprintf("%s port %s clashes with %s; left out", e.Cluster, portString(p), portString(clash)))
				continue
			} else if clash.Port != 0 {
				continue // the same port again
			}
			m.Ports = append(m.Ports, p)
		}
		if e.SessionAffinity != w.SessionAffinity {
			reasons[ReasonSessionAffinityConflict] = true
			msgs = append(msgs, fmt.Sprintf("%s session affinity %s, the oldest export (%s) has %s", e.Cluster, e.SessionAffinity, w.Cluster, w.SessionAffinity))
		} else if e.AffinityTimeout != w.AffinityTimeout {
			reasons[ReasonSessionAffinityConfigConflict] = true
			msgs = append(msgs, fmt.Sprintf("%s session affinity timeout %ds, the oldest export (%s) has %ds", e.Cluster, e.AffinityTimeout, w.Cluster, w.AffinityTimeout))
		}
	}
	slices.Sort(m.Clusters)
	for r := range reasons {
		m.Reasons = append(m.Reasons, r)
	}
	slices.Sort(m.Reasons)
	m.Message = strings.Join(msgs, "; ")
	return m
}

// portClash finds p's counterpart in taken. It returns (clash, true) when p
// conflicts with a taken port, (same, false) when p is already there, and
// a zero port and false when p is new.
func portClash(taken []meshapi.ServicePort, p meshapi.ServicePort) (meshapi.ServicePort, bool) {
	for _, t := range taken {
		sameName := t.Name == p.Name
		sameNumber := t.Port == p.Port && t.Protocol == p.Protocol
		switch {
		case sameName && sameNumber && t.AppProtocol == p.AppProtocol:
			return t, false
		case sameName || sameNumber:
			return t, true
		}
	}
	return meshapi.ServicePort{}, false
}

func portString(p meshapi.ServicePort) string {
	s := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
	if p.Name != "" {
		s = p.Name + "=" + s
	}
	if p.AppProtocol != "" {
		s += " (" + p.AppProtocol + ")"
	}
	return s
}
