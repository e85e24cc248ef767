package clustermesh

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/pkg/meshapi"
)

func cc(name string, id uint32, cidrs ...string) *meshapi.ClusterConfig {
	c := &meshapi.ClusterConfig{Name: name, ID: id, FormatVersion: meshapi.FormatVersion}
	for _, s := range cidrs {
		c.PodCIDRs = append(c.PodCIDRs, netip.MustParsePrefix(s))
	}
	return c
}

func established(c *meshapi.ClusterConfig, at string) *meshapi.ClusterConfig {
	t, err := time.Parse(time.RFC3339, at)
	if err != nil {
		panic(err)
	}
	c.Established = t
	return c
}

func newTestRegistry() *Registry {
	return NewRegistry("local", 1, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")})
}

func TestRegistryAdmit(t *testing.T) {
	tests := []struct {
		name     string
		admit    []*meshapi.ClusterConfig // admitted in order, all must succeed
		try      *meshapi.ClusterConfig
		wantErr  string
		wantRule string
	}{
		{name: "disjoint clusters", admit: []*meshapi.ClusterConfig{cc("east", 2, "10.2.0.0/16")}, try: cc("west", 3, "10.3.0.0/16")},
		{name: "the local name", try: cc("local", 3, "10.3.0.0/16"), wantErr: "cluster local is the local cluster's name", wantRule: RuleLocalCluster},
		{name: "the local ID", try: cc("west", 1, "10.3.0.0/16"), wantErr: "cluster ID 1 of west is the local cluster's (local)", wantRule: RuleLocalCluster},
		{name: "overlapping the local CIDRs", try: cc("west", 3, "10.0.0.0/8"), wantErr: "pod CIDR 10.0.0.0/8 of west overlaps 10.0.0.0/16 of the local cluster local", wantRule: RuleLocalCluster},
		{name: "an ID already admitted, lower name wins", admit: []*meshapi.ClusterConfig{cc("east", 2, "10.2.0.0/16")}, try: cc("west", 2, "10.3.0.0/16"), wantErr: "cluster ID 2 of west is already used by east (east wins: lower-name)", wantRule: RuleLowerName},
		{name: "CIDRs overlapping an admitted cluster, lower ID wins", admit: []*meshapi.ClusterConfig{cc("east", 2, "10.2.0.0/16")}, try: cc("west", 3, "10.3.0.0/16", "10.2.5.0/24"), wantErr: "pod CIDR 10.2.5.0/24 of west overlaps 10.2.0.0/16 of east (east wins: lower-cluster-id)", wantRule: RuleLowerClusterID},
		{name: "an established cluster beats a newcomer with a lower ID", admit: []*meshapi.ClusterConfig{established(cc("east", 5, "10.2.0.0/16"), "2026-01-01T00:00:00Z")}, try: established(cc("west", 3, "10.2.0.0/17"), "2026-06-01T00:00:00Z"), wantErr: "overlaps 10.2.0.0/16 of east (east wins: established-earlier)", wantRule: RuleEstablishedEarlier},
		{name: "a cluster that says since when it is established beats one that does not", admit: []*meshapi.ClusterConfig{established(cc("west", 5, "10.2.0.0/16"), "2026-01-01T00:00:00Z")}, try: cc("east", 3, "10.2.0.0/17"), wantErr: "(west wins: established-earlier)", wantRule: RuleEstablishedEarlier},
		{name: "the refusal names the first-ranked clash", admit: []*meshapi.ClusterConfig{cc("north", 4, "10.4.0.0/16"), cc("east", 2, "10.2.0.0/16")}, try: cc("west", 4, "10.2.0.0/16"), wantErr: "overlaps 10.2.0.0/16 of east (east wins: lower-cluster-id)"},
		{name: "re-admitting itself with a changed claim", admit: []*meshapi.ClusterConfig{cc("east", 2, "10.2.0.0/16")}, try: cc("east", 2, "10.2.0.0/15")},
		{name: "IPv6 overlap", admit: []*meshapi.ClusterConfig{cc("east", 2, "fd00:2::/48")}, try: cc("west", 3, "fd00:2:0:1::/64"), wantErr: "overlaps fd00:2::/48 of east"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry()
			for _, c := range tt.admit {
				_, err := r.Offer(c)
				require.NoError(t, err)
			}
			displaced, err := r.Offer(tt.try)
			require.Empty(t, displaced, "a lower-ranked newcomer displaces nobody")
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.Contains(t, r.Admitted(), tt.try.Name)
				require.Nil(t, r.Verdict(tt.try.Name))
				return
			}
			require.ErrorIs(t, err, ErrConflict)
			require.Contains(t, err.Error(), tt.wantErr)
			require.NotContains(t, r.Admitted(), tt.try.Name)
			v := r.Verdict(tt.try.Name)
			require.NotNil(t, v)
			require.Equal(t, tt.try.Name, v.Loser)
			require.NotEmpty(t, v.Winner)
			if tt.wantRule != "" {
				require.Equal(t, tt.wantRule, v.Rule)
			}
		})
	}
}

// TestRegistryVerdictDoesNotDependOnArrivalOrder admits the same
// conflicting candidates in every order: the admitted set and every
// refusal are the same each time, and a higher-ranked latecomer displaces
// the one admitted before it.
func TestRegistryVerdictDoesNotDependOnArrivalOrder(t *testing.T) {
	cands := []*meshapi.ClusterConfig{
		established(cc("old", 9, "10.2.0.0/16"), "2026-01-01T00:00:00Z"),
		cc("idlow", 2, "10.2.128.0/17", "10.5.0.0/16"), // overlaps old; loses on established
		cc("chain", 3, "10.5.1.0/24"),                  // overlaps idlow only: admitted once idlow is out
		cc("dupid", 3, "10.6.0.0/16"),                  // same ID as chain; chain wins on name
		cc("free", 7, "10.7.0.0/16"),
	}
	wantAdmitted := []string{"chain", "free", "old"}
	wantRules := map[string]string{"idlow": RuleEstablishedEarlier, "dupid": RuleLowerName}
	rnd := rand.New(rand.NewPCG(1, 2))
	for run := range 50 {
		order := slices.Clone(cands)
		rnd.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		r := newTestRegistry()
		for _, c := range order {
			displaced, _ := r.Offer(c)
			for _, d := range displaced {
				require.Contains(t, r.Admitted(), c.Name, "only an admitted newcomer displaces")
				require.NotContains(t, r.Admitted(), d)
			}
		}
		require.Equal(t, wantAdmitted, r.Admitted(), "run %d", run)
		for loser, rule := range wantRules {
			v := r.Verdict(loser)
			require.NotNil(t, v, "run %d: %s", run, loser)
			require.Equal(t, rule, v.Rule, "run %d: %s", run, loser)
		}
	}
}

func TestRegistryReleaseAdmitsTheRefusedAndWakesThem(t *testing.T) {
	r := newTestRegistry()
	_, err := r.Offer(cc("east", 2, "10.2.0.0/16"))
	require.NoError(t, err)
	wake := r.Changed()
	_, err = r.Offer(cc("west", 3, "10.2.0.0/17"))
	require.ErrorIs(t, err, ErrConflict)
	select {
	case <-wake:
		t.Fatal("a refusal of a cluster without a claim changes nothing")
	default:
	}
	r.Release("east")
	select {
	case <-wake:
	default:
		t.Fatal("release did not wake the refused")
	}
	require.Equal(t, []string{"west"}, r.Admitted(), "the refused candidate is admitted without asking again")
	displaced, err := r.Offer(cc("east", 2, "10.2.0.0/16"))
	require.NoError(t, err, "east ranks first again (lower ID)")
	require.Equal(t, []string{"west"}, displaced)
	require.Equal(t, []string{"east"}, r.Admitted())
}

func TestRegistryRefusalDropsThePreviousClaim(t *testing.T) {
	r := newTestRegistry()
	_, err := r.Offer(cc("east", 2, "10.2.0.0/16"))
	require.NoError(t, err)
	_, err = r.Offer(cc("west", 3, "10.3.0.0/16"))
	require.NoError(t, err)
	// east's remote now claims west's range: east still ranks first (lower
	// ID), so west is displaced; east's old claim is gone.
	displaced, err := r.Offer(cc("east", 2, "10.3.0.0/24"))
	require.NoError(t, err)
	require.Equal(t, []string{"west"}, displaced)
	_, err = r.Offer(cc("north", 4, "10.2.0.0/16"))
	require.NoError(t, err, "east's old range is free")
}
