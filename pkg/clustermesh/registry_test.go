package clustermesh

import (
	"net/netip"
	"testing"

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

func TestRegistryAdmit(t *testing.T) {
	tests := []struct {
		name    string
		admit   []*meshapi.ClusterConfig // admitted in order, all must succeed
		try     *meshapi.ClusterConfig
		wantErr string
	}{
		{name: "disjoint clusters", admit: []*meshapi.ClusterConfig{cc("east", 2, "10.2.0.0/16")}, try: cc("west", 3, "10.3.0.0/16")},
		{name: "the local name", try: cc("local", 3, "10.3.0.0/16"), wantErr: "cluster local is the local cluster's name"},
		{name: "the local ID", try: cc("west", 1, "10.3.0.0/16"), wantErr: "cluster ID 1 of west is the local cluster's (local)"},
		{name: "overlapping the local CIDRs", try: cc("west", 3, "10.0.0.0/8"), wantErr: "pod CIDR 10.0.0.0/8 of west overlaps 10.0.0.0/16 of the local cluster local"},
		{name: "an ID already admitted", admit: []*meshapi.ClusterConfig{cc("east", 2, "10.2.0.0/16")}, try: cc("west", 2, "10.3.0.0/16"), wantErr: "cluster ID 2 of west is already used by east (admitted first)"},
		{name: "CIDRs overlapping an admitted cluster", admit: []*meshapi.ClusterConfig{cc("east", 2, "10.2.0.0/16")}, try: cc("west", 3, "10.3.0.0/16", "10.2.5.0/24"), wantErr: "pod CIDR 10.2.5.0/24 of west overlaps 10.2.0.0/16 of east (admitted first)"},
		{name: "the refusal names the earliest holder", admit: []*meshapi.ClusterConfig{cc("north", 4, "10.4.0.0/16"), cc("east", 2, "10.2.0.0/16")}, try: cc("west", 4, "10.2.0.0/16"), wantErr: "already used by north"},
		{name: "re-admitting itself with a changed claim", admit: []*meshapi.ClusterConfig{cc("east", 2, "10.2.0.0/16")}, try: cc("east", 2, "10.2.0.0/15")},
		{name: "IPv6 overlap", admit: []*meshapi.ClusterConfig{cc("east", 2, "fd00:2::/48")}, try: cc("west", 3, "fd00:2:0:1::/64"), wantErr: "overlaps fd00:2::/48 of east"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRegistry("local", 1, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")})
			for _, c := range tt.admit {
				require.NoError(t, r.Admit(c))
			}
			err := r.Admit(tt.try)
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.Contains(t, r.Admitted(), tt.try.Name)
				return
			}
			require.ErrorIs(t, err, ErrConflict)
			require.Contains(t, err.Error(), tt.wantErr)
			require.NotContains(t, r.Admitted(), tt.try.Name)
		})
	}
}

func TestRegistryReleaseAdmitsTheRefusedAndWakesThem(t *testing.T) {
	r := NewRegistry("local", 1, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")})
	require.NoError(t, r.Admit(cc("east", 2, "10.2.0.0/16")))
	wake := r.Changed()
	require.ErrorIs(t, r.Admit(cc("west", 3, "10.2.0.0/17")), ErrConflict)
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
	require.NoError(t, r.Admit(cc("west", 3, "10.2.0.0/17")))
	require.ErrorIs(t, r.Admit(cc("east", 2, "10.2.0.0/16")), ErrConflict, "now east is the later one")
	require.Equal(t, []string{"west"}, r.Admitted())
}

func TestRegistryRefusalDropsThePreviousClaim(t *testing.T) {
	r := NewRegistry("local", 1, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")})
	require.NoError(t, r.Admit(cc("east", 2, "10.2.0.0/16")))
	require.NoError(t, r.Admit(cc("west", 3, "10.3.0.0/16")))
	// east's remote now claims west's range: refused, and its old claim is gone.
	require.ErrorIs(t, r.Admit(cc("east", 2, "10.3.0.0/24")), ErrConflict)
	require.Equal(t, []string{"west"}, r.Admitted())
}
