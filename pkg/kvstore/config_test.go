package kvstore

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/certs"
)

// writePKI writes ca.crt, client.crt and client.key (0600) into dir.
func writePKI(t *testing.T, dir string) *certs.KeyPair {
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
			c, err := LoadConfig(path, logrus.New())
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
	_, err := LoadConfig(path, log)
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
	a, err := LoadConfig(path, nil)
	require.NoError(t, err)
	b, err := LoadConfig(path, nil)
	require.NoError(t, err)
	require.Equal(t, a.Hash, b.Hash, "same files, same hash")

	writePKI(t, dir) // rotate: same YAML, new PEM files
	c, err := LoadConfig(path, nil)
	require.NoError(t, err)
	require.NotEqual(t, a.Hash, c.Hash, "rotated certificates change the hash")
}

func TestBackoffGrowsAndIsBounded(t *testing.T) {
	b := Backoff{Min: 100, Max: 1000, Jitter: 0.5}
	var last []int64
	for range 8 {
		last = append(last, int64(b.Next()))
	}
	// Upper bounds double from Min until Max; jitter only shortens.
	bounds := []int64{100, 200, 400, 800, 1000, 1000, 1000, 1000}
	for i, d := range last {
		require.LessOrEqual(t, d, bounds[i])
		require.GreaterOrEqual(t, d, bounds[i]/2)
	}
	b.Reset()
	require.LessOrEqual(t, int64(b.Next()), int64(100))
}
