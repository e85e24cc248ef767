package main

import (
	"bytes"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/certs"
)

// harness runs the real command in-process with a controllable clock.
type harness struct {
	t      *testing.T
	now    time.Time
	stdout bytes.Buffer
	stderr bytes.Buffer
}

func newHarness(t *testing.T) *harness {
	return &harness{t: t, now: time.Now()}
}

// run executes one command line and returns its error; output accumulates.
func (h *harness) run(args ...string) error {
	h.t.Helper()
	h.stdout.Reset()
	h.stderr.Reset()
	c := &cli{stdout: &h.stdout, stderr: &h.stderr, now: func() time.Time { return h.now }}
	return c.run(args)
}

func (h *harness) mustRun(args ...string) {
	h.t.Helper()
	require.NoError(h.t, h.run(args...), "podmesh-certs %s\nstderr: %s", strings.Join(args, " "), h.stderr.String())
}

// mesh builds the directories of a serving cluster "east" with a server
// certificate for 127.0.0.1 and a peer certificate for "west".
func (h *harness) mesh(root string) layout {
	east := layout{filepath.Join(root, "east")}
	h.mustRun("init", "--dir", east.dir, "--cluster", "east")
	h.mustRun("server", "--dir", east.dir, "--ip", "127.0.0.1", "--dns", "mesh.east.example")
	h.mustRun("peer", "--dir", east.dir, "--peer", "west")
	return east
}

// reissue replaces a leaf certificate of l with one built by the test, signed
// by signer (l's own CA unless another is given).
func reissue(t *testing.T, signer *certs.CA, certPath, keyPath string, o certs.Options, server bool) {
	t.Helper()
	var kp *certs.KeyPair
	var err error
	if server {
		kp, err = signer.IssueServer(o)
	} else {
		kp, err = signer.IssueClient(o)
	}
	require.NoError(t, err)
	require.NoError(t, kp.WriteFiles(certPath, keyPath, true))
}

func loadTestCA(t *testing.T, l layout) *certs.CA {
	t.Helper()
	ca, err := certs.LoadCA(l.caCert(), l.caKey())
	require.NoError(t, err)
	return ca
}

func TestInitServerPeerConnectFollowTheDirectoryConvention(t *testing.T) {
	h := newHarness(t)
	root := t.TempDir()
	east := h.mesh(root)
	out := filepath.Join(root, "west-clustermesh.yaml")
	h.mustRun("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--out", out)
	require.Contains(t, h.stderr.String(), "--allowed-peers remote-west")

	for _, tc := range []struct {
		path string
		mode os.FileMode
	}{
		{east.caCert(), 0o644}, {east.caKey(), 0o600},
		{east.serverCert(), 0o644}, {east.serverKey(), 0o600},
		{east.peerCert("west"), 0o644}, {east.peerKey("west"), 0o600},
		{out, 0o600},
	} {
		fi, err := os.Stat(tc.path)
		require.NoError(t, err)
		require.Equal(t, tc.mode, fi.Mode().Perm(), tc.path)
	}

	ca := loadTestCA(t, east)
	require.Equal(t, "podmesh-ca-east", ca.Cert.Subject.CommonName)
	server, err := certs.LoadKeyPair(east.serverCert(), east.serverKey())
	require.NoError(t, err)
	require.NoError(t, server.Cert.VerifyHostname("127.0.0.1"))
	require.NoError(t, server.Cert.VerifyHostname("mesh.east.example"))
	require.NoError(t, server.Cert.VerifyHostname("clustermesh-apiserver.podmesh-system.svc"))
	kt, err := certs.KeyTypeOf(server.Key)
	require.NoError(t, err)
	require.Equal(t, certs.KeyECDSAP256, kt, "ECDSA P-256 is the default")

	peer, err := certs.LoadKeyPair(east.peerCert("west"), east.peerKey("west"))
	require.NoError(t, err)
	require.Equal(t, "remote-west", peer.Cert.Subject.CommonName)
	require.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, peer.Cert.ExtKeyUsage)
	require.NoError(t, peer.Cert.CheckSignatureFrom(ca.Cert), "the peer certificate is signed by the SERVING cluster's CA")

	secret, err := readSecretFile(out)
	require.NoError(t, err)
	require.Equal(t, "podmesh-clustermesh", secret.Metadata.Name)
	require.Equal(t, "podmesh-system", secret.Metadata.Namespace)
	require.ElementsMatch(t, []string{"east", "east.ca.crt", "east.crt", "east.key"}, keys(secret.Data))
	var cfg etcdClientConfig
	require.NoError(t, yaml.UnmarshalStrict(secret.Data["east"], &cfg))
	require.Equal(t, etcdClientConfig{
		Endpoints:     []string{"https://127.0.0.1:32379"},
		TrustedCAFile: "east.ca.crt",
		CertFile:      "east.crt",
		KeyFile:       "east.key",
	}, cfg)
	require.Equal(t, ca.CertPEM, secret.Data["east.ca.crt"])
	require.Equal(t, peer.CertPEM, secret.Data["east.crt"])
	require.Equal(t, peer.KeyPEM, secret.Data["east.key"])

	h.mustRun("allowed-peers", "--dir", east.dir)
	require.Equal(t, "remote-west\n", h.stdout.String())
}

func TestConnectMergesClustersIntoOneSecret(t *testing.T) {
	h := newHarness(t)
	root := t.TempDir()
	east := h.mesh(root)
	north := layout{filepath.Join(root, "north")}
	h.mustRun("init", "--dir", north.dir, "--cluster", "north")
	h.mustRun("server", "--dir", north.dir, "--ip", "::1")
	h.mustRun("peer", "--dir", north.dir, "--peer", "west")

	out := filepath.Join(root, "west.yaml")
	h.mustRun("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--out", out)
	h.mustRun("connect", "--dir", north.dir, "--peer", "west", "--address", "::1", "--port", "2379", "--out", out, "--merge")
	secret, err := readSecretFile(out)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{
		"east", "east.ca.crt", "east.crt", "east.key",
		"north", "north.ca.crt", "north.crt", "north.key",
	}, keys(secret.Data))
	var cfg etcdClientConfig
	require.NoError(t, yaml.Unmarshal(secret.Data["north"], &cfg))
	require.Equal(t, []string{"https://[::1]:2379"}, cfg.Endpoints)

	err = h.run("connect", "--dir", north.dir, "--peer", "west", "--address", "::1", "--out", out, "--merge")
	require.ErrorContains(t, err, out)
	require.ErrorContains(t, err, "already holds key \"north\"")
	h.mustRun("connect", "--dir", north.dir, "--peer", "west", "--address", "::1", "--out", out, "--merge", "--force")
}

func TestCommandsNeverOverwriteWithoutForce(t *testing.T) {
	h := newHarness(t)
	root := t.TempDir()
	east := h.mesh(root)
	out := filepath.Join(root, "west.yaml")
	h.mustRun("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--out", out)
	tlsOut := filepath.Join(root, "tls.yaml")
	h.mustRun("server-secret", "--dir", east.dir, "--out", tlsOut)

	for _, tc := range []struct {
		name  string
		args  []string
		file  string
		files []string
	}{
		{"init", []string{"init", "--dir", east.dir, "--cluster", "east"}, east.caCert(), []string{east.caCert(), east.caKey()}},
		{"server", []string{"server", "--dir", east.dir, "--ip", "127.0.0.1"}, east.serverCert(), []string{east.serverCert(), east.serverKey()}},
		{"peer", []string{"peer", "--dir", east.dir, "--peer", "west"}, east.peerCert("west"), []string{east.peerCert("west"), east.peerKey("west")}},
		{"connect", []string{"connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--out", out}, out, []string{out}},
		{"server-secret", []string{"server-secret", "--dir", east.dir, "--out", tlsOut}, tlsOut, []string{tlsOut}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &harness{t: t, now: h.now}
			before := map[string][]byte{}
			for _, f := range tc.files {
				b, err := os.ReadFile(f)
				require.NoError(t, err)
				before[f] = b
			}
			err := h.run(tc.args...)
			require.ErrorIs(t, err, certs.ErrExists)
			require.ErrorContains(t, err, tc.file)
			for _, f := range tc.files {
				b, err := os.ReadFile(f)
				require.NoError(t, err)
				require.Equal(t, before[f], b, "%s unchanged", f)
			}
			h.mustRun(append(tc.args, "--force")...)
			changed := false
			for _, f := range tc.files {
				b, err := os.ReadFile(f)
				require.NoError(t, err)
				changed = changed || !bytes.Equal(before[f], b)
			}
			if tc.name != "connect" && tc.name != "server-secret" {
				require.True(t, changed, "--force rewrote the files")
			}
		})
	}
}

// TestConnectRefusesBadCertificates covers what connect must catch before a
// Secret reaches a cluster: each error names the file and says why.
func TestConnectRefusesBadCertificates(t *testing.T) {
	now := time.Now()
	other, err := certs.NewCA(certs.Options{CommonName: "podmesh-ca-other"})
	require.NoError(t, err)
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, l layout)
		file  func(l layout) string
		want  []string
	}{
		{
			name: "expired peer certificate",
			spoil: func(t *testing.T, l layout) {
				reissue(t, loadTestCA(t, l), l.peerCert("west"), l.peerKey("west"),
					certs.Options{CommonName: "remote-west", NotBefore: now.Add(-48 * time.Hour), Validity: 24 * time.Hour}, false)
			},
			file: func(l layout) string { return l.peerCert("west") },
			want: []string{"expired at " + now.Add(-24*time.Hour).UTC().Format("2006-01-02T15")},
		},
		{
			name: "not yet valid peer certificate",
			spoil: func(t *testing.T, l layout) {
				reissue(t, loadTestCA(t, l), l.peerCert("west"), l.peerKey("west"),
					certs.Options{CommonName: "remote-west", NotBefore: now.Add(72 * time.Hour)}, false)
			},
			file: func(l layout) string { return l.peerCert("west") },
			want: []string{"not yet valid", "valid from " + now.Add(72*time.Hour).UTC().Format("2006-01-02T15")},
		},
		{
			name: "peer certificate signed by another CA",
			spoil: func(t *testing.T, l layout) {
				reissue(t, other, l.peerCert("west"), l.peerKey("west"), certs.Options{CommonName: "remote-west"}, false)
			},
			file: func(l layout) string { return l.peerCert("west") },
			want: []string{"not signed by CA", "podmesh-ca-other"},
		},
		{
			name: "server certificate signed by another CA",
			spoil: func(t *testing.T, l layout) {
				reissue(t, other, l.serverCert(), l.serverKey(),
					certs.Options{CommonName: "clustermesh-apiserver.east", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}, true)
			},
			file: func(l layout) string { return l.serverCert() },
			want: []string{"not signed by CA"},
		},
		{
			name: "expired server certificate",
			spoil: func(t *testing.T, l layout) {
				reissue(t, loadTestCA(t, l), l.serverCert(), l.serverKey(),
					certs.Options{CommonName: "clustermesh-apiserver.east", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
						NotBefore: now.Add(-10 * time.Hour), Validity: time.Hour}, true)
			},
			file: func(l layout) string { return l.serverCert() },
			want: []string{"expired at"},
		},
		{
			name: "peer certificate with the wrong CN",
			spoil: func(t *testing.T, l layout) {
				reissue(t, loadTestCA(t, l), l.peerCert("west"), l.peerKey("west"), certs.Options{CommonName: "remote-north"}, false)
			},
			file: func(l layout) string { return l.peerCert("west") },
			want: []string{`has CN "remote-north", want "remote-west"`},
		},
		{
			name: "key of another certificate",
			spoil: func(t *testing.T, l layout) {
				kp, err := loadTestCA(t, l).IssueClient(certs.Options{CommonName: "remote-west"})
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(l.peerKey("west"), kp.KeyPEM, 0o600))
			},
			file: func(l layout) string { return l.peerKey("west") },
			want: []string{"does not match certificate"},
		},
		{
			name:  "missing peer key",
			spoil: func(t *testing.T, l layout) { require.NoError(t, os.Remove(l.peerKey("west"))) },
			file:  func(l layout) string { return l.peerKey("west") },
			want:  []string{"read peer key", "no such file or directory"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			root := t.TempDir()
			east := h.mesh(root)
			tc.spoil(t, east)
			out := filepath.Join(root, "west.yaml")
			err := h.run("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--out", out)
			require.Error(t, err)
			require.ErrorContains(t, err, tc.file(east))
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
			_, statErr := os.Stat(out)
			require.ErrorIs(t, statErr, os.ErrNotExist, "no Secret written")
			_, statErr = os.Stat(east.allowedPeers())
			require.ErrorIs(t, statErr, os.ErrNotExist, "no allow-list entry added")

			// verify --dir reports the same file.
			err = h.run("verify", "--dir", east.dir)
			require.ErrorContains(t, err, tc.file(east))
		})
	}
}

func TestConnectNeverOverwritesAForeignFile(t *testing.T) {
	h := newHarness(t)
	root := t.TempDir()
	east := h.mesh(root)
	out := filepath.Join(root, "notes.txt")
	require.NoError(t, os.WriteFile(out, []byte("not a secret"), 0o644))
	err := h.run("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--out", out)
	require.ErrorIs(t, err, certs.ErrExists)
	err = h.run("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--out", out, "--merge")
	require.ErrorContains(t, err, "secret manifest "+out)
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, "not a secret", string(data))
}

func TestConnectRefusesAddressMissingFromServerCertificate(t *testing.T) {
	h := newHarness(t)
	east := h.mesh(t.TempDir())
	err := h.run("connect", "--dir", east.dir, "--peer", "west", "--address", "192.0.2.7")
	require.ErrorContains(t, err, east.serverCert())
	require.ErrorContains(t, err, "not valid for --address 192.0.2.7")
	require.Empty(t, h.stdout.String(), "no Secret printed")
}

func TestReadErrorsNameTheFile(t *testing.T) {
	h := newHarness(t)
	dir := filepath.Join(t.TempDir(), "east")
	err := h.run("peer", "--dir", dir, "--peer", "west")
	require.ErrorContains(t, err, "read CA certificate "+filepath.Join(dir, "ca.crt")+": no such file or directory")

	h.mustRun("init", "--dir", dir, "--cluster", "east")
	require.NoError(t, os.Remove(filepath.Join(dir, "ca.key")))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "ca.key"), 0o700))
	err = h.run("peer", "--dir", dir, "--peer", "west")
	require.ErrorContains(t, err, "read CA key "+filepath.Join(dir, "ca.key")+": is a directory")
}

func TestExpiredCAIsRefusedByName(t *testing.T) {
	h := newHarness(t)
	dir := filepath.Join(t.TempDir(), "east")
	h.mustRun("init", "--dir", dir, "--cluster", "east", "--validity", "2d")
	h.now = h.now.Add(72 * time.Hour)
	err := h.run("peer", "--dir", dir, "--peer", "west")
	require.ErrorContains(t, err, "CA "+filepath.Join(dir, "ca.crt")+" expired at")
}

func TestLeafMustNotOutliveCA(t *testing.T) {
	h := newHarness(t)
	dir := filepath.Join(t.TempDir(), "east")
	h.mustRun("init", "--dir", dir, "--cluster", "east", "--validity", "30d")
	err := h.run("peer", "--dir", dir, "--peer", "west", "--validity", "365d")
	require.ErrorContains(t, err, "after CA "+filepath.Join(dir, "ca.crt")+" expires")
	h.mustRun("peer", "--dir", dir, "--peer", "west", "--validity", "7d")
}

func TestRotate(t *testing.T) {
	h := newHarness(t)
	east := h.mesh(t.TempDir())
	caBefore, err := os.ReadFile(east.caCert())
	require.NoError(t, err)
	// The peer certificate has 10 days left, the server certificate a year.
	reissue(t, loadTestCA(t, east), east.peerCert("west"), east.peerKey("west"),
		certs.Options{CommonName: "remote-west", Organization: []string{"podmesh"}, NotBefore: h.now.Add(-20 * 24 * time.Hour), Validity: 30 * 24 * time.Hour}, false)
	serverBefore, err := os.ReadFile(east.serverCert())
	require.NoError(t, err)
	peerBefore, err := certs.LoadKeyPair(east.peerCert("west"), east.peerKey("west"))
	require.NoError(t, err)

	h.mustRun("rotate", "--dir", east.dir, "--all", "--before", "30d")
	require.Contains(t, h.stderr.String(), east.serverCert()+": valid until")
	require.Contains(t, h.stderr.String(), "not rotated")

	serverAfter, err := os.ReadFile(east.serverCert())
	require.NoError(t, err)
	require.Equal(t, serverBefore, serverAfter, "a certificate with more than --before left is kept")

	peerAfter, err := certs.LoadKeyPair(east.peerCert("west"), east.peerKey("west"))
	require.NoError(t, err)
	require.NotEqual(t, peerBefore.CertPEM, peerAfter.CertPEM)
	require.NotEqual(t, peerBefore.KeyPEM, peerAfter.KeyPEM, "rotation makes a new key")
	require.Equal(t, "remote-west", peerAfter.Cert.Subject.CommonName)
	require.Equal(t, 30*24*time.Hour, peerAfter.Cert.NotAfter.Sub(peerAfter.Cert.NotBefore), "validity of the old certificate kept")
	ca := loadTestCA(t, east)
	require.Equal(t, caBefore, ca.CertPEM, "the CA never changes")
	require.NoError(t, certs.VerifyIssued(ca.Cert, peerAfter.Cert, h.now, x509.ExtKeyUsageClientAuth))
	fi, err := os.Stat(east.peerKey("west"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	h.mustRun("rotate", "--dir", east.dir, "--server", "--force")
	server, err := certs.LoadKeyPair(east.serverCert(), east.serverKey())
	require.NoError(t, err)
	require.NotEqual(t, serverBefore, server.CertPEM)
	require.NoError(t, server.Cert.VerifyHostname("127.0.0.1"), "SANs kept")
	require.NoError(t, server.Cert.VerifyHostname("mesh.east.example"), "SANs kept")
	h.mustRun("verify", "--dir", east.dir)
}

func TestRotateRenewsAnExpiredCertificate(t *testing.T) {
	h := newHarness(t)
	east := h.mesh(t.TempDir())
	reissue(t, loadTestCA(t, east), east.peerCert("west"), east.peerKey("west"),
		certs.Options{CommonName: "remote-west", NotBefore: h.now.Add(-48 * time.Hour), Validity: 24 * time.Hour}, false)
	require.ErrorContains(t, h.run("verify", "--dir", east.dir), "expired at")
	h.mustRun("rotate", "--dir", east.dir, "--peer", "west", "--validity", "90d")
	h.mustRun("verify", "--dir", east.dir)
}

func TestRotateRefusesForeignCertificate(t *testing.T) {
	h := newHarness(t)
	east := h.mesh(t.TempDir())
	other, err := certs.NewCA(certs.Options{CommonName: "podmesh-ca-other"})
	require.NoError(t, err)
	reissue(t, other, east.peerCert("west"), east.peerKey("west"), certs.Options{CommonName: "remote-west"}, false)
	err = h.run("rotate", "--dir", east.dir, "--peer", "west", "--force")
	require.ErrorContains(t, err, east.peerCert("west"))
	require.ErrorContains(t, err, "not signed by the CA")
}

func TestVerifyConfigOnSecretVolume(t *testing.T) {
	h := newHarness(t)
	root := t.TempDir()
	east := h.mesh(root)
	out := filepath.Join(root, "west.yaml")
	h.mustRun("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--out", out)
	secret, err := readSecretFile(out)
	require.NoError(t, err)
	vol := filepath.Join(root, "clustermesh")
	require.NoError(t, certs.WriteSecretVolume(vol, secret.Data))

	h.mustRun("verify", "--config", filepath.Join(vol, "east"))
	require.Contains(t, h.stdout.String(), "https://127.0.0.1:32379")

	// Time passes beyond the peer certificate's end.
	h.now = h.now.Add(400 * 24 * time.Hour)
	err = h.run("verify", "--config", filepath.Join(vol, "east"))
	require.ErrorContains(t, err, filepath.Join(vol, "east.crt")+" expired at")
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"init without cluster", []string{"init", "--dir", "x"}, "--cluster are required"},
		{"bad cluster name", []string{"init", "--dir", "x", "--cluster", "East_1"}, "cluster name"},
		{"bad validity", []string{"init", "--dir", "x", "--cluster", "e", "--validity", "soon"}, `invalid duration "soon"`},
		{"bad key type", []string{"init", "--dir", "x", "--cluster", "e", "--key-type", "dsa"}, "unknown key type"},
		{"stray argument", []string{"verify", "--dir", "x", "extra"}, `unexpected argument "extra"`},
		{"verify needs one source", []string{"verify"}, "exactly one of --dir and --config"},
		{"rotate needs a target", []string{"rotate", "--dir", "x"}, "one of --server, --peer, --all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			err := h.run(tc.args...)
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, 2, exitCode(err))
		})
	}
}

func TestHelpDocumentsTheDirectoryConvention(t *testing.T) {
	h := newHarness(t)
	h.mustRun("--help")
	for _, want := range []string{"<dir>/ca.crt, ca.key", "<dir>/server.crt, server.key", "<dir>/peers/<peer>.crt, .key", "remote-<peer>"} {
		require.Contains(t, h.stdout.String(), want)
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"30d", 30 * 24 * time.Hour, true},
		{"0d", 0, true},
		{"720h", 720 * time.Hour, true},
		{"90m", 90 * time.Minute, true},
		{"-1h", 0, false},
		{"d", 0, false},
		{"1.5d", 0, false},
		{"soon", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseDuration(tc.in)
			if !tc.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func keys(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
