package clustermesh

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/podmesh/podmesh/pkg/agentstatus"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// ErrConflict is wrapped by every refusal of Registry.Admit.
var ErrConflict = errors.New("conflict")

// Conflict kinds and the rules that settle them (agentstatus.Conflict).
const (
	ConflictClusterID = "cluster-id"
	ConflictPodCIDR   = "pod-cidr"
	ConflictName      = "name"

	RuleLocalCluster       = "local-cluster"
	RuleEstablishedEarlier = "established-earlier"
	RuleLowerClusterID     = "lower-cluster-id"
	RuleLowerName          = "lower-name"
)

// ConflictError is a refusal: it names both sides and the deciding rule.
type ConflictError struct{ agentstatus.Conflict }

func (e *ConflictError) Error() string { return "conflict: " + e.Detail }

// Unwrap lets errors.Is(err, ErrConflict) hold.
func (e *ConflictError) Unwrap() error { return ErrConflict }

type claim struct {
	name        string
	id          uint32
	cidrs       []netip.Prefix
	established time.Time // zero when the remote does not publish it
}

// rank orders claims: the one that sorts first wins a conflict. A cluster
// that says since when it is established ranks before one that does not,
// and earlier before later, so a newcomer never displaces a cluster that
// was there first; then the lower cluster ID; then the lower name. Every
// input is what the remote publishes, so every node ranks alike.
func rank(a, b claim) (int, string) {
	switch {
	case !a.established.IsZero() && b.established.IsZero():
		return -1, RuleEstablishedEarlier
	case a.established.IsZero() && !b.established.IsZero():
		return 1, RuleEstablishedEarlier
	case !a.established.Equal(b.established):
		return a.established.Compare(b.established), RuleEstablishedEarlier
	case a.id != b.id:
		return cmp.Compare(a.id, b.id), RuleLowerClusterID
	}
	return cmp.Compare(a.name, b.name), RuleLowerName
}

// Registry decides which remote clusters may be connected at once: cluster
// IDs unique, pod CIDRs disjoint, neither clashing with the local cluster.
//
// The verdict is a function of the candidates' configs only, not of the
// order they arrived in: candidates are taken in rank order and each is
// admitted unless it clashes with the local cluster or with one admitted
// before it. Every node that sees the same configs reaches the same verdict;
// a refused candidate stays a candidate and is admitted as soon as what
// blocked it is released. Changed wakes the refused.
type Registry struct {
	local claim

	// mu protects claims, verdicts, admitted and changed.
	mu sync.Mutex
	// claims holds every candidate with a valid config, admitted or not.
	claims map[string]claim
	// verdicts holds, per refused candidate, why; admitted ones are absent.
	verdicts map[string]*ConflictError
	// admitted is the result of the last decision.
	admitted map[string]bool
	changed  chan struct{}
}

// NewRegistry returns a registry for the local cluster's name, ID and pod CIDRs.
func NewRegistry(name string, id uint32, podCIDRs []netip.Prefix) *Registry {
	return &Registry{
		local:    claim{name: name, id: id, cidrs: podCIDRs},
		claims:   make(map[string]claim),
		verdicts: make(map[string]*ConflictError),
		admitted: make(map[string]bool),
		changed:  make(chan struct{}),
	}
}

// Offer records cfg as its cluster's candidate (replacing a previous one)
// and decides again. It returns an error wrapping ErrConflict (a
// *ConflictError) when cfg's cluster is refused, and the clusters that were
// admitted before and are not any more (displaced by cfg's).
func (r *Registry) Offer(cfg *meshapi.ClusterConfig) (displaced []string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.claims[cfg.Name] = claim{name: cfg.Name, id: cfg.ID, cidrs: slices.Clone(cfg.PodCIDRs), established: cfg.Established}
	displaced = r.decideLocked()
	if v := r.verdicts[cfg.Name]; v != nil {
		return displaced, v
	}
	return displaced, nil
}

// Admit is Offer for a caller that learns of displacements through Verdict
// (or does not act on them).
func (r *Registry) Admit(cfg *meshapi.ClusterConfig) error {
	_, err := r.Offer(cfg)
	return err
}

// Release drops a cluster's candidate; clusters it blocked are admitted.
func (r *Registry) Release(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.claims[name]; !ok {
		return
	}
	delete(r.claims, name)
	delete(r.verdicts, name)
	r.decideLocked()
}

// decideLocked recomputes every verdict, wakes the waiters when a refused
// candidate became admitted, and returns the candidates that lost admission.
func (r *Registry) decideLocked() (displaced []string) {
	order := make([]claim, 0, len(r.claims))
	for _, c := range r.claims {
		order = append(order, c)
	}
	slices.SortFunc(order, func(a, b claim) int { n, _ := rank(a, b); return n })
	verdicts := make(map[string]*ConflictError)
	var admitted []claim
	for _, c := range order {
		if v := clash(r.local, c, RuleLocalCluster); v != nil {
			verdicts[c.name] = v
			continue
		}
		for _, w := range admitted {
			_, rule := rank(w, c)
			if v := clash(w, c, rule); v != nil {
				verdicts[c.name] = v
				break
			}
		}
		if verdicts[c.name] == nil {
			admitted = append(admitted, c)
		}
	}
	woke := false
	next := make(map[string]bool, len(admitted))
	for _, c := range admitted {
		next[c.name] = true
		if r.verdicts[c.name] != nil {
			woke = true // a refused candidate got in: wake the waiters
		}
	}
	for name := range r.admitted {
		if !next[name] {
			if _, still := r.claims[name]; still {
				displaced = append(displaced, name)
			}
		}
	}
	r.verdicts, r.admitted = verdicts, next
	if woke {
		r.notifyLocked()
	}
	slices.Sort(displaced)
	return displaced
}

// clash returns why loser cannot be admitted next to winner, or nil.
func clash(winner, loser claim, rule string) *ConflictError {
	c := agentstatus.Conflict{Winner: winner.name, WinnerID: winner.id, Loser: loser.name, LoserID: loser.id, Rule: rule}
	local := rule == RuleLocalCluster
	first := winner.name
	if local {
		first = "the local cluster " + winner.name
	}
	switch {
	case loser.name == winner.name:
		c.Kind = ConflictName
		c.Detail = fmt.Sprintf("cluster %s is the local cluster's name", loser.name)
	case loser.id == winner.id:
		c.Kind = ConflictClusterID
		if local {
			c.Detail = fmt.Sprintf("cluster ID %d of %s is the local cluster's (%s)", loser.id, loser.name, winner.name)
		} else {
			c.Detail = fmt.Sprintf("cluster ID %d of %s is already used by %s (%s wins: %s)", loser.id, loser.name, winner.name, winner.name, rule)
		}
	default:
		p, q, ok := meshapi.Overlap(loser.cidrs, winner.cidrs)
		if !ok {
			return nil
		}
		c.Kind = ConflictPodCIDR
		if local {
			c.Detail = fmt.Sprintf("pod CIDR %s of %s overlaps %s of %s", p, loser.name, q, first)
		} else {
			c.Detail = fmt.Sprintf("pod CIDR %s of %s overlaps %s of %s (%s wins: %s)", p, loser.name, q, winner.name, winner.name, rule)
		}
	}
	return &ConflictError{c}
}

func (r *Registry) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Changed is closed the next time a verdict changes.
func (r *Registry) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Verdict returns why name is refused, or nil when it is admitted or unknown.
func (r *Registry) Verdict(name string) *agentstatus.Conflict {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v := r.verdicts[name]; v != nil {
		c := v.Conflict
		return &c
	}
	return nil
}

// Admitted lists the admitted clusters by name.
func (r *Registry) Admitted() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for name := range r.admitted {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
