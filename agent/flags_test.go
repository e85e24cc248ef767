package main

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseFlags(t *testing.T) {
	base := []string{"--cluster-name=west", "--cluster-id=2", "--pod-cidrs=10.2.0.0/16,fd00:2::/48"}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	withNode := env(map[string]string{"NODE_NAME": "w1"})
	tests := []struct {
		name    string
		args    []string
		getenv  func(string) string
		wantErr []string // each must appear
		check   func(t *testing.T, c *config)
	}{
		{
			name: "defaults", args: base, getenv: withNode,
			check: func(t *testing.T, c *config) {
				require.Equal(t, "w1", c.NodeName, "from NODE_NAME")
				require.Equal(t, uint32(2), c.ClusterID)
				require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00:2::/48")}, c.PodCIDRs)
				require.Equal(t, "ebpf", c.RoutingMode)
				require.Equal(t, 8472, c.TunnelPort)
				require.Equal(t, "/var/lib/podmesh/clustermesh", c.ClustermeshConfig)
				require.Equal(t, "cache", c.MeshMode, "the cache tier is the default")
				require.Equal(t, "/var/lib/podmesh/cache/cache.yaml", c.CacheConfig)
				require.Equal(t, 10*time.Second, c.ReconnectWindow)
				require.Equal(t, "/sys/fs/bpf/podmesh", c.BPFRoot)
				require.Equal(t, "127.0.0.1:9876", c.StatusListen)
				require.Equal(t, 2*time.Minute, c.SyncTimeout)
			},
		},
		{
			name: "flag overrides NODE_NAME", args: append([]string{"--node-name=w2", "--routing-mode=native", "--mtu=9000"}, base...), getenv: withNode,
			check: func(t *testing.T, c *config) {
				require.Equal(t, "w2", c.NodeName)
				require.Equal(t, "native", c.RoutingMode)
				require.Equal(t, 9000, c.MTU)
			},
		},
		{name: "no node name", args: base, getenv: env(nil), wantErr: []string{"--node-name: required (or set NODE_NAME)"}},
		{name: "missing required flags", args: nil, getenv: withNode, wantErr: []string{"--cluster-name: required", "--cluster-id: 0 not in 1..255", "--pod-cidrs: required"}},
		{name: "cluster ID out of range", args: []string{"--cluster-name=west", "--cluster-id=256", "--pod-cidrs=10.2.0.0/16"}, getenv: withNode, wantErr: []string{"--cluster-id: 256 not in 1..255"}},
		{name: "invalid cluster name", args: []string{"--cluster-name=West_1", "--cluster-id=2", "--pod-cidrs=10.2.0.0/16"}, getenv: withNode, wantErr: []string{"--cluster-name:", "West_1"}},
		{name: "unparsable CIDR", args: []string{"--cluster-name=west", "--cluster-id=2", "--pod-cidrs=10.2.0.0/16,banana"}, getenv: withNode, wantErr: []string{`--pod-cidrs: "banana" is not a CIDR`}},
		{name: "non-canonical CIDR", args: []string{"--cluster-name=west", "--cluster-id=2", "--pod-cidrs=10.2.0.1/16"}, getenv: withNode, wantErr: []string{"--pod-cidrs:", "not canonical"}},
		{name: "overlapping CIDRs", args: []string{"--cluster-name=west", "--cluster-id=2", "--pod-cidrs=10.2.0.0/16,10.2.1.0/24"}, getenv: withNode, wantErr: []string{"--pod-cidrs:", "overlaps"}},
		{name: "unknown routing mode", args: append([]string{"--routing-mode=geneve"}, base...), getenv: withNode, wantErr: []string{`--routing-mode: "geneve" is not one of ebpf, vxlan, native`}},
		{name: "unknown mesh mode", args: append([]string{"--mesh-mode=gossip"}, base...), getenv: withNode, wantErr: []string{`--mesh-mode: "gossip" is not one of cache, direct`}},
		{name: "cache mode without a cache file", args: append([]string{"--mesh-mode=cache", "--cache-config="}, base...), getenv: withNode, wantErr: []string{"--cache-config: must not be empty in cache mode"}},
		{name: "bad tunnel port", args: append([]string{"--tunnel-port=70000"}, base...), getenv: withNode, wantErr: []string{"--tunnel-port: 70000 not in 1..65535"}},
		{name: "bad MTU", args: append([]string{"--mtu=500"}, base...), getenv: withNode, wantErr: []string{"--mtu: 500"}},
		{name: "bad reconnect window", args: append([]string{"--cache-reconnect-window=0s"}, base...), getenv: withNode, wantErr: []string{"--cache-reconnect-window: 0s must be positive"}},
		{name: "bad sync timeout", args: append([]string{"--sync-timeout=0s"}, base...), getenv: withNode, wantErr: []string{"--sync-timeout: 0s must be positive"}},
		{name: "bad status address", args: append([]string{"--status-listen=nowhere"}, base...), getenv: withNode, wantErr: []string{"--status-listen:"}},
		{name: "unknown flag", args: append([]string{"--frobnicate"}, base...), getenv: withNode, wantErr: []string{"flag provided but not defined: -frobnicate"}},
		{name: "stray argument", args: append(append([]string{}, base...), "extra"), getenv: withNode, wantErr: []string{`unexpected argument "extra"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, tt.getenv, io.Discard)
			if len(tt.wantErr) > 0 {
				require.Error(t, err)
				for _, w := range tt.wantErr {
					require.True(t, strings.Contains(err.Error(), w), "error %q lacks %q", err, w)
				}
				return
			}
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}
