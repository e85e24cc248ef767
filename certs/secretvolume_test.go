package certs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func readVolume(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	got := map[string]string{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		got[e.Name()] = string(data)
	}
	return got
}

func timestampDirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var ts []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "..") {
			ts = append(ts, e.Name())
		}
	}
	return ts
}

func TestWriteSecretVolumeLaysOutKubeletStructure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "clustermesh")
	require.NoError(t, WriteSecretVolume(dir, map[string][]byte{
		"east":        []byte("endpoints: [https://127.0.0.1:32379]\n"),
		"east.ca.crt": []byte("ca"),
	}))

	target, err := os.Readlink(filepath.Join(dir, DataDirName))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(target, ".."), "..data points at %q", target)
	require.Equal(t, []string{target}, timestampDirs(t, dir))

	for _, key := range []string{"east", "east.ca.crt"} {
		link, err := os.Readlink(filepath.Join(dir, key))
		require.NoError(t, err, "visible %s must be a symlink", key)
		require.Equal(t, filepath.Join(DataDirName, key), link)
		fi, err := os.Stat(filepath.Join(dir, target, key))
		require.NoError(t, err)
		require.Equal(t, SecretVolumeFileMode, fi.Mode().Perm())
	}
	require.Equal(t, map[string]string{
		"east":        "endpoints: [https://127.0.0.1:32379]\n",
		"east.ca.crt": "ca",
	}, readVolume(t, dir))
	_, err = os.Lstat(filepath.Join(dir, dataDirTmpName))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestWriteSecretVolumeUpdateSwapsAtomically(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, WriteSecretVolume(dir, map[string][]byte{"east": []byte("v1"), "west": []byte("w1")}))
	first, err := os.Readlink(filepath.Join(dir, DataDirName))
	require.NoError(t, err)

	require.NoError(t, WriteSecretVolume(dir, map[string][]byte{"east": []byte("v2"), "north": []byte("n1")}))
	second, err := os.Readlink(filepath.Join(dir, DataDirName))
	require.NoError(t, err)

	require.NotEqual(t, first, second)
	require.Equal(t, []string{second}, timestampDirs(t, dir), "old timestamp directory removed")
	require.Equal(t, map[string]string{"east": "v2", "north": "n1"}, readVolume(t, dir))
	_, err = os.Lstat(filepath.Join(dir, "west"))
	require.ErrorIs(t, err, os.ErrNotExist, "link of a removed key is gone")
}

func TestWriteSecretVolumeLeavesForeignFilesAlone(t *testing.T) {
	dir := t.TempDir()
	foreign := filepath.Join(dir, "notes.txt")
	require.NoError(t, os.WriteFile(foreign, []byte("mine"), 0o644))
	require.NoError(t, WriteSecretVolume(dir, map[string][]byte{"east": []byte("v1")}))
	require.NoError(t, WriteSecretVolume(dir, map[string][]byte{"west": []byte("w1")}))
	data, err := os.ReadFile(foreign)
	require.NoError(t, err)
	require.Equal(t, "mine", string(data))

	err = WriteSecretVolume(dir, map[string][]byte{"notes.txt": []byte("x")})
	require.ErrorContains(t, err, foreign)
	require.ErrorContains(t, err, "not a secret volume link")
	require.Equal(t, map[string]string{"notes.txt": "mine", "west": "w1"}, readVolume(t, dir),
		"a refused update changes nothing")
	require.Len(t, timestampDirs(t, dir), 1)
}

func TestValidateSecretKey(t *testing.T) {
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{"east", true},
		{"east.ca.crt", true},
		{"a_b-c.D9", true},
		{"", false},
		{"..data", false},
		{"..", false},
		{".", false},
		{"a/b", false},
		{"a b", false},
		{strings.Repeat("a", 254), false},
	} {
		t.Run(tc.key, func(t *testing.T) {
			err := ValidateSecretKey(tc.key)
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
}

func TestWriteSecretVolumeRejectsBadKeys(t *testing.T) {
	dir := t.TempDir()
	err := WriteSecretVolume(dir, map[string][]byte{"../escape": []byte("x")})
	require.ErrorContains(t, err, dir)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries)
}
