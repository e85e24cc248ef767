package clustermesh

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/podmesh/podmesh/certs"
)

func TestIsClusterFileName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"east", true},
		{"east-2", true},
		{"local", false},
		{"east.crt", false},
		{"east.key", false},
		{"..data", false},
		{"..2026_11_21_23_00_00.123", false},
		{".hidden", false},
		{"East", false},
		{"-east", false},
		{"a-cluster-name-that-is-longer-than-32", false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, IsClusterFileName(tt.name, "local"), tt.name)
	}
}

func TestScanDirReadsAKubeletSecretVolume(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "clustermesh")
	ca, err := certs.NewCA(certs.Options{CommonName: "ca"})
	require.NoError(t, err)
	kp, err := ca.IssueClient(certs.Options{CommonName: "remote-local"})
	require.NoError(t, err)
	good := []byte("endpoints: [https://127.0.0.1:2379]\ntrusted-ca-file: east-ca.crt\ncert-file: east.crt\nkey-file: east.key\n")
	files := map[string][]byte{
		"east": good, "east.crt": kp.CertPEM, "east.key": kp.KeyPEM, "east-ca.crt": ca.CertPEM,
		"west":  []byte("endpoints: [https://127.0.0.1:2379\n"),
		"south": []byte("endpoints: [https://127.0.0.1:2379]\ntrusted-ca-file: east-ca.crt\ncert-file: nope.crt\nkey-file: east.key\n"),
		"local": good,
	}
	require.NoError(t, certs.WriteSecretVolume(dir, files))

	got, err := ScanDir(dir, "local")
	require.NoError(t, err)
	var names []string
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	require.Equal(t, []string{"east", "south", "west"}, names)
	require.NoError(t, got["east"].Err)
	require.Equal(t, filepath.Join(dir, "east.crt"), got["east"].Config.CertFile, "relative paths resolve against the directory")
	require.ErrorContains(t, got["west"].Err, "parse etcd config")
	require.ErrorContains(t, got["south"].Err, "nope.crt")

	// Rotating the certificate changes east's hash, not south's.
	kp2, err := ca.IssueClient(certs.Options{CommonName: "remote-local"})
	require.NoError(t, err)
	files["east.crt"], files["east.key"] = kp2.CertPEM, kp2.KeyPEM
	require.NoError(t, certs.WriteSecretVolume(dir, files))
	again, err := ScanDir(dir, "local")
	require.NoError(t, err)
	require.NotEqual(t, got["east"].Hash, again["east"].Hash)
	require.Equal(t, got["south"].Hash, again["south"].Hash)

	// Removing the key from the volume removes the cluster.
	delete(files, "east")
	require.NoError(t, certs.WriteSecretVolume(dir, files))
	again, err = ScanDir(dir, "local")
	require.NoError(t, err)
	require.NotContains(t, again, "east")

	_, err = ScanDir(filepath.Join(dir, "missing"), "local")
	require.ErrorIs(t, err, os.ErrNotExist)
}
