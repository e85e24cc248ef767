package server

import (
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/rest"

	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy/proxytest"
)

func validArgs() []string {
	return []string{
		"--cluster-name=east", "--cluster-id=7", "--pod-cidrs=10.1.0.0/16, fd00:1::/48",
		"--tls-cert=/c.crt", "--tls-key=/c.key", "--tls-client-ca=/ca.crt",
		"--allowed-peers=remote-west,remote-south", "--data-dir=/var/lib/x",
	}
}

func with(args []string, extra ...string) []string {
	return append(append([]string{}, args...), extra...)
}

func without(args []string, flag string) []string {
	var out []string
	for _, a := range args {
		if !strings.HasPrefix(a, flag+"=") {
			out = append(out, a)
		}
	}
	return out
}

func TestParseFlagsAcceptsAValidCommandLine(t *testing.T) {
	cfg, err := ParseFlags(validArgs(), io.Discard)
	require.NoError(t, err)
	require.Equal(t, "east", cfg.ClusterName)
	require.Equal(t, uint32(7), cfg.ClusterID)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00:1::/48")}, cfg.PodCIDRs)
	require.Equal(t, []string{"remote-west", "remote-south"}, cfg.AllowedPeers)
	require.Equal(t, ":2379", cfg.Listen)
	require.Equal(t, "127.0.0.1:0", cfg.EtcdListenClient)
}

func TestParseFlagsNamesWhatIsWrong(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want []string // every substring must appear in the error
	}{
		{"nothing given", nil, []string{"--cluster-name: required", "--cluster-id: required", "--pod-cidrs: required", "--tls-cert: required", "--tls-key: required", "--tls-client-ca: required", "--data-dir: required", "--allowed-peers: required"}},
		{"bad cluster name", with(validArgs(), "--cluster-name=East_1"), []string{"--cluster-name", `"East_1"`}},
		{"cluster name too long", with(validArgs(), "--cluster-name="+strings.Repeat("a", 33)), []string{"--cluster-name", "at most 32"}},
		{"cluster id zero", with(validArgs(), "--cluster-id=0"), []string{"--cluster-id", "cluster ID 0 not in 1..255"}},
		{"cluster id too big", with(validArgs(), "--cluster-id=256"), []string{"--cluster-id", "256"}},
		{"cluster id not a number", with(validArgs(), "--cluster-id=seven"), []string{`--cluster-id "seven": not a number`}},
		{"pod CIDR unparsable", with(validArgs(), "--pod-cidrs=10.1.0.0/16,banana"), []string{`--pod-cidrs: "banana" is not a CIDR`}},
		{"pod CIDRs overlap", with(validArgs(), "--pod-cidrs=10.1.0.0/16,10.1.128.0/17"), []string{"--pod-cidrs", "10.1.0.0/16 overlaps 10.1.128.0/17"}},
		{"pod CIDR not canonical", with(validArgs(), "--pod-cidrs=10.1.0.7/16"), []string{"--pod-cidrs", "not canonical"}},
		{"pod CIDR too broad", with(validArgs(), "--pod-cidrs=10.0.0.0/7"), []string{"--pod-cidrs", "broader than /8"}},
		{"etcd not on loopback", with(validArgs(), "--etcd-listen-client=0.0.0.0:2379"), []string{"--etcd-listen-client", "loopback"}},
		{"listen without port", with(validArgs(), "--listen=0.0.0.0"), []string{`--listen "0.0.0.0"`}},
		{"no allowed peers", with(without(validArgs(), "--allowed-peers"), "--allowed-peers= , "), []string{"--allowed-peers: required"}},
		{"unknown flag", with(validArgs(), "--bogus=1"), []string{"bogus"}},
		{"stray argument", with(validArgs(), "extra"), []string{"unexpected arguments"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFlags(tc.args, io.Discard)
			require.Error(t, err)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestNewRefusesUnreadableCertificates(t *testing.T) {
	pki := proxytest.NewPKI(t)
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	require.NoError(t, pki.Server.WriteFiles(certFile, keyFile, true))
	require.NoError(t, os.WriteFile(caFile, pki.CA.CertPEM, 0o644))
	garbage := filepath.Join(dir, "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("not PEM"), 0o644))

	base := Config{
		ClusterName: "east", ClusterID: 7, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
		Listen: "127.0.0.1:0", HealthListen: "127.0.0.1:0", EtcdListenClient: "127.0.0.1:0",
		TLSCert: certFile, TLSKey: keyFile, TLSClientCA: caFile, AllowedPeers: []string{"remote-west"},
		DataDir: t.TempDir(), SyncWorkers: 1,
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	kube := &rest.Config{Host: "https://127.0.0.1:1"}

	_, err := New(base, kube, log)
	require.NoError(t, err, "the valid configuration is accepted")

	cases := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"missing certificate", func(c *Config) { c.TLSCert = filepath.Join(dir, "nope.crt") }, "nope.crt"},
		{"garbage key", func(c *Config) { c.TLSKey = garbage }, "garbage.pem"},
		{"missing client CA", func(c *Config) { c.TLSClientCA = filepath.Join(dir, "nope-ca.crt") }, "read client CA"},
		{"client CA without PEM", func(c *Config) { c.TLSClientCA = garbage }, "no PEM certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.modify(&cfg)
			_, err := New(cfg, kube, log)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
		})
	}

	cfg := base
	cfg.Kubeconfig = filepath.Join(dir, "no-kubeconfig")
	_, err = New(cfg, nil, log)
	require.ErrorContains(t, err, "--kubeconfig")
}

func TestParseFlagsImporterFlags(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "podmesh-system")
	t.Setenv("POD_NAME", "clustermesh-apiserver-abc")
	cfg, err := ParseFlags(with(validArgs(), "--clustermesh-config=/var/lib/podmesh/clustermesh"), io.Discard)
	require.NoError(t, err)
	require.Equal(t, "/var/lib/podmesh/clustermesh", cfg.ClusterMeshConfig)
	require.Equal(t, "podmesh-system", cfg.LeaderElectionNamespace, "the Lease lives in the pod's namespace by default")
	require.Equal(t, "clustermesh-apiserver-abc", cfg.LeaderElectionID, "the pod's name by default")

	cfg, err = ParseFlags(validArgs(), io.Discard)
	require.NoError(t, err)
	require.Empty(t, cfg.ClusterMeshConfig, "no import without the flag")

	_, err = ParseFlags(with(validArgs(), "--clustermesh-config=/d", "--leader-election-id="), io.Discard)
	require.ErrorContains(t, err, "--leader-election-id: required")
}

// TestCacheFlags: with --clustermesh-config the cache runs on :2381 for the
// local agents' CN by default; a CN that is also an allowed peer is refused,
// so a peer can never read the cache.
func TestCacheFlags(t *testing.T) {
	cfg, err := ParseFlags(with(validArgs(), "--clustermesh-config=/etc/mesh"), io.Discard)
	require.NoError(t, err)
	require.True(t, cfg.CacheEnabled())
	require.Equal(t, ":2381", cfg.CacheListen)
	require.Equal(t, []string{"local-east"}, cfg.CacheAllowedClients)

	cfg, err = ParseFlags(with(validArgs(), "--clustermesh-config=/etc/mesh", "--cache-listen="), io.Discard)
	require.NoError(t, err)
	require.False(t, cfg.CacheEnabled(), "an empty --cache-listen turns the cache off")
	cfg, err = ParseFlags(validArgs(), io.Discard)
	require.NoError(t, err)
	require.False(t, cfg.CacheEnabled(), "no remotes, no cache")

	_, err = ParseFlags(with(validArgs(), "--clustermesh-config=/etc/mesh", "--cache-allowed-clients=remote-west"), io.Discard)
	require.ErrorContains(t, err, `--cache-allowed-clients: "remote-west" is also an allowed peer`)
}
