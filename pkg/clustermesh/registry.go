package clustermesh

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

// ErrConflict is wrapped by every refusal of Registry.Admit.
var ErrConflict = errors.New("conflict")

type claim struct {
	name  string
	id    uint32
	cidrs []netip.Prefix
}

// Registry decides which remote clusters may be connected at once: cluster
// IDs unique, pod CIDRs disjoint, neither clashing with the local cluster.
// The first cluster admitted keeps what it claimed; a later one that clashes
// is refused until the first is released. Changed wakes the refused.
type Registry struct {
	local claim

	// mu protects claims and changed.
	mu sync.Mutex
	// claims in admission order, so a refusal names the earliest holder.
	claims  []claim
	changed chan struct{}
}

// NewRegistry returns a registry for the local cluster's name, ID and pod CIDRs.
func NewRegistry(name string, id uint32, podCIDRs []netip.Prefix) *Registry {
	return &Registry{local: claim{name: name, id: id, cidrs: podCIDRs}, changed: make(chan struct{})}
}

// Admit records cfg's claim, replacing the cluster's previous claim, or
// refuses it with an error wrapping ErrConflict that names both clusters.
// A refused cluster loses any claim it held before.
func (r *Registry) Admit(cfg *meshapi.ClusterConfig) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.checkLocked(cfg)
	if err != nil {
		r.releaseLocked(cfg.Name)
		return err
	}
	c := claim{name: cfg.Name, id: cfg.ID, cidrs: slices.Clone(cfg.PodCIDRs)}
	if i := r.indexLocked(cfg.Name); i >= 0 {
		old := r.claims[i]
		r.claims[i] = c
		if old.id != c.id || !slices.Equal(old.cidrs, c.cidrs) {
			r.notifyLocked() // a shrunk claim may unblock another cluster
		}
		return nil
	}
	r.claims = append(r.claims, c)
	return nil
}

func (r *Registry) checkLocked(cfg *meshapi.ClusterConfig) error {
	if cfg.Name == r.local.name {
		return fmt.Errorf("%w: cluster %s is the local cluster's name", ErrConflict, cfg.Name)
	}
	if cfg.ID == r.local.id {
		return fmt.Errorf("%w: cluster ID %d of %s is the local cluster's (%s)", ErrConflict, cfg.ID, cfg.Name, r.local.name)
	}
	if p, q, ok := meshapi.Overlap(cfg.PodCIDRs, r.local.cidrs); ok {
		return fmt.Errorf("%w: pod CIDR %s of %s overlaps %s of the local cluster %s", ErrConflict, p, cfg.Name, q, r.local.name)
	}
	for _, c := range r.claims {
		if c.name == cfg.Name {
			continue
		}
		if c.id == cfg.ID {
			return fmt.Errorf("%w: cluster ID %d of %s is already used by %s (admitted first)", ErrConflict, cfg.ID, cfg.Name, c.name)
		}
		if p, q, ok := meshapi.Overlap(cfg.PodCIDRs, c.cidrs); ok {
			return fmt.Errorf("%w: pod CIDR %s of %s overlaps %s of %s (admitted first)", ErrConflict, p, cfg.Name, q, c.name)
		}
	}
	return nil
}

// Release drops a cluster's claim; clusters it blocked can be admitted.
func (r *Registry) Release(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.releaseLocked(name)
}

func (r *Registry) releaseLocked(name string) {
	i := r.indexLocked(name)
	if i < 0 {
		return
	}
	r.claims = slices.Delete(r.claims, i, i+1)
	r.notifyLocked()
}

func (r *Registry) indexLocked(name string) int {
	return slices.IndexFunc(r.claims, func(c claim) bool { return c.name == name })
}

func (r *Registry) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Changed is closed the next time a claim is released or shrinks.
func (r *Registry) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Admitted lists the admitted clusters in admission order.
func (r *Registry) Admitted() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.claims))
	for i, c := range r.claims {
		out[i] = c.name
	}
	return out
}
