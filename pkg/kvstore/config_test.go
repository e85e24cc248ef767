package kvstore_test

import (
	"bytes"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/pkg/kvstore"
)

// writePKI writes ca.crt, client.crt and client.key (0600) into dir.
func writePKI(t testing.TB, dir string) *certs.KeyPair {
	t.Helper()
	ca, err := certs.NewCA(certs.Options{CommonName: "test-ca"})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644))
	kp, err := ca.IssueClient(certs.Options{CommonName: "remote-west"})
	require.NoError(t, err)
	require.NoError(t, kp.WriteFiles(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"), true))
	return kp
}

const goodYAML = "endpoints:\n- https://127.0.0.1:2379\ntrusted-ca-file: ca.crt\ncert-file: client.crt\nkey-file: client.key\n"

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		prepare func(t *testing.T, dir string)
		wantErr string // substring; empty means success
	}{
		{name: "relative paths resolve against the file's directory", yaml: goodYAML},
		{name: "unknown keys are tolerated", yaml: goodYAML + "dial-timeout: 5s\n"},
		{name: "malformed YAML", yaml: "endpoints: [https://x:1\n", wantErr: "parse etcd config"},
		{name: "no endpoints", yaml: "trusted-ca-file: ca.crt\n", wantErr: "no endpoints"},
		{name: "endpoint without scheme", yaml: "endpoints: [127.0.0.1:2379]\ntrusted-ca-file: ca.crt\n", wantErr: "not a URL with a host"},
		{name: "https without CA", yaml: "endpoints: [https://127.0.0.1:2379]\n", wantErr: "need trusted-ca-file"},
		{name: "cert without key", yaml: "endpoints: [https://127.0.0.1:2379]\ntrusted-ca-file: ca.crt\ncert-file: client.crt\n", wantErr: "given together"},
		{
			name: "missing certificate", yaml: goodYAML,
			prepare: func(t *testing.T, dir string) { require.NoError(t, os.Remove(filepath.Join(dir, "client.crt"))) },
			wantErr: "read certificate",
		},
		{
			name: "unreadable key (a directory)", yaml: goodYAML,
			prepare: func(t *testing.T, dir string) {
				require.NoError(t, os.Remove(filepath.Join(dir, "client.key")))
				require.NoError(t, os.Mkdir(filepath.Join(dir, "client.key"), 0o700))
			},
			wantErr: "read key",
		},
		{
			name: "key that does not match the certificate", yaml: goodYAML,
			prepare: func(t *testing.T, dir string) {
				other := t.TempDir()
				writePKI(t, other)
				b, err := os.ReadFile(filepath.Join(other, "client.key"))
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(filepath.Join(dir, "client.key"), b, 0o600))
			},
			wantErr: "client certificate and key",
		},
		{
			name: "CA file without a certificate", yaml: goodYAML,
			prepare: func(t *testing.T, dir string) {
				require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("junk"), 0o644))
			},
			wantErr: "trusted CA",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writePKI(t, dir)
			if tt.prepare != nil {
				tt.prepare(t, dir)
			}
			path := filepath.Join(dir, "west")
			require.NoError(t, os.WriteFile(path, []byte(tt.yaml), 0o644))
			c, err := kvstore.LoadConfig(path, logrus.New())
			if tt.wantErr != "" {
				require.Error(t, err)
				require.Contains(t, err.Error(), tt.wantErr)
				require.Contains(t, err.Error(), path, "the error names the file")
				return
			}
			require.NoError(t, err)
			require.Equal(t, filepath.Join(dir, "ca.crt"), c.TrustedCAFile)
			require.Equal(t, filepath.Join(dir, "client.key"), c.KeyFile)
			require.NotNil(t, c.TLS)
			require.Len(t, c.TLS.Certificates, 1)
		})
	}
}

func TestLoadConfigWarnsOnReadableKeyWithoutLoggingIt(t *testing.T) {
	dir := t.TempDir()
	kp := writePKI(t, dir)
	require.NoError(t, os.Chmod(filepath.Join(dir, "client.key"), 0o644))
	path := filepath.Join(dir, "west")
	require.NoError(t, os.WriteFile(path, []byte(goodYAML), 0o644))

	log, hook := test.NewNullLogger()
	var buf bytes.Buffer
	log.SetOutput(&buf)
	_, err := kvstore.LoadConfig(path, log)
	require.NoError(t, err)
	require.Len(t, hook.AllEntries(), 1)
	e := hook.LastEntry()
	require.Equal(t, logrus.WarnLevel, e.Level)
	require.Equal(t, "0644", e.Data["mode"])
	for _, entry := range hook.AllEntries() {
		s, _ := entry.String()
		require.NotContains(t, s, "PRIVATE KEY")
		require.False(t, strings.Contains(s, string(kp.KeyPEM[30:60])), "key material in the log")
	}
}

func TestConfigHashCoversReferencedFiles(t *testing.T) {
	dir := t.TempDir()
	writePKI(t, dir)
	path := filepath.Join(dir, "west")
	require.NoError(t, os.WriteFile(path, []byte(goodYAML), 0o644))
	a, err := kvstore.LoadConfig(path, nil)
	require.NoError(t, err)
	b, err := kvstore.LoadConfig(path, nil)
	require.NoError(t, err)
	require.Equal(t, a.Hash, b.Hash, "same files, same hash")

	writePKI(t, dir) // rotate: same YAML, new PEM files
	c, err := kvstore.LoadConfig(path, nil)
	require.NoError(t, err)
	require.NotEqual(t, a.Hash, c.Hash, "rotated certificates change the hash")
}

func TestNewBackoffDoublesUpToItsCapWithJitter(t *testing.T) {
	b := kvstore.NewBackoff(100, 1000)
	// The base doubles from min until max; jitter adds at most half of it.
	bases := []int64{100, 200, 400, 800, 1000, 1000, 1000, 1000}
	for i, base := range bases {
		d := int64(b.Step())
		require.GreaterOrEqual(t, d, base, "step %d", i)
		require.LessOrEqual(t, d, base+base/2, "step %d", i)
	}
	b = kvstore.NewBackoff(100, 1000) // a reset is a fresh value
	require.LessOrEqual(t, int64(b.Step()), int64(150))

	nr := kvstore.Backoff{Min: 100, Max: 1000} // the Next/Reset form steps the same
	for i, base := range bases {
		d := int64(nr.Next())
		require.GreaterOrEqual(t, d, base, "Next %d", i)
		require.LessOrEqual(t, d, base+base/2, "Next %d", i)
	}
	nr.Reset()
	require.LessOrEqual(t, int64(nr.Next()), int64(150))
}

func TestRescannedConfigParsesItsCertificatesOnlyWhenTheyChange(t *testing.T) {
	dir := t.TempDir()
	writePKI(t, dir)
	path := filepath.Join(dir, "west")
	require.NoError(t, os.WriteFile(path, []byte(goodYAML), 0o600))

	a, err := kvstore.LoadConfig(path, nil)
	require.NoError(t, err)
	b, err := kvstore.LoadConfig(path, nil)
	require.NoError(t, err)
	require.NotSame(t, a.TLS, b.TLS, "each load gets its own tls.Config to change")
	require.Same(t, a.TLS.RootCAs, b.TLS.RootCAs, "the unchanged CA was not parsed again")
	require.NotNil(t, a.TLS.Certificates[0].Leaf)
	require.Same(t, a.TLS.Certificates[0].Leaf, b.TLS.Certificates[0].Leaf, "the unchanged key pair was not parsed again")
	b.TLS.ServerName = "changed"
	c, err := kvstore.LoadConfig(path, nil)
	require.NoError(t, err)
	require.Empty(t, c.TLS.ServerName, "a caller's change does not leak into the next load")

	kp := writePKI(t, dir) // a new CA and key pair in the same files
	d, err := kvstore.LoadConfig(path, nil)
	require.NoError(t, err)
	require.NotSame(t, a.TLS.RootCAs, d.TLS.RootCAs)
	require.Equal(t, kp.CertPEM, pemOf(d.TLS.Certificates[0].Certificate[0]), "the new certificate is served")

	// An empty CA file is an error, not the "no CA" a file without
	// trusted-ca-file gets.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ca.crt"), nil, 0o644))
	_, err = kvstore.LoadConfig(path, nil)
	require.ErrorContains(t, err, "no PEM certificate")
}

func pemOf(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
