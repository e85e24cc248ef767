package certs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/pkg/kvstore"
)

func TestProxyEndpoint(t *testing.T) {
	for _, tc := range []struct {
		addr string
		port int
		want string
	}{
		{"192.0.2.10", 32379, "https://192.0.2.10:32379"},
		{"fd00::1", 2379, "https://[fd00::1]:2379"},
		{"mesh.east.example", 2379, "https://mesh.east.example:2379"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			require.Equal(t, tc.want, ProxyEndpoint(tc.addr, tc.port))
		})
	}
}

func TestMeshSecretFilesResolveInsideTheVolume(t *testing.T) {
	files, err := MeshSecretFiles("east", []string{"https://192.0.2.10:32379"}, []byte("ca"), []byte("cert"), []byte("key"))
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, WriteSecretVolume(dir, files))

	raw, err := os.ReadFile(filepath.Join(dir, "east"))
	require.NoError(t, err)
	var cfg kvstore.ClientFile
	require.NoError(t, yaml.UnmarshalStrict(raw, &cfg))
	require.Equal(t, []string{"https://192.0.2.10:32379"}, cfg.Endpoints)
	for file, want := range map[string]string{cfg.TrustedCAFile: "ca", cfg.CertFile: "cert", cfg.KeyFile: "key"} {
		require.False(t, filepath.IsAbs(file), "%s is relative", file)
		got, err := os.ReadFile(filepath.Join(dir, file))
		require.NoError(t, err)
		require.Equal(t, want, string(got))
	}
}

func TestMeshSecretFilesRejectsBadClusterKey(t *testing.T) {
	_, err := MeshSecretFiles("../east", nil, nil, nil, nil)
	require.ErrorContains(t, err, `cluster "../east"`)
}
