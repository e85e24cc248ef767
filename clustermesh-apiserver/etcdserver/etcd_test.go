package etcdserver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func testLog(tb testing.TB) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(testWriter{tb})
	return l
}

type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.tb.Log(string(p)); return len(p), nil }

func TestRolesSeparateWriterAndReader(t *testing.T) {
	skipShort(t)
	ctx := t.Context()
	s, err := Start(ctx, Config{DataDir: t.TempDir(), UnsafeNoFsync: true, Log: testLog(t), EtcdLog: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })

	_, err = s.Writer.Put(ctx, "podmesh/v1/heartbeat/east", "x")
	require.NoError(t, err)
	resp, err := s.Reader.Get(ctx, "podmesh/v1/heartbeat/east")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	require.Equal(t, "x", string(resp.Kvs[0].Value))

	_, err = s.Reader.Put(ctx, "podmesh/v1/heartbeat/east", "y")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied, "reader must not write")
	_, err = s.Writer.Put(ctx, "other/key", "y")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied, "writer is confined to the podmesh/ prefix")
	_, err = s.Reader.Get(ctx, "other/key")
	require.ErrorIs(t, err, rpctypes.ErrPermissionDenied, "reader is confined to the podmesh/ prefix")

	// Without credentials nothing is readable: auth is on.
	anon, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}})
	require.NoError(t, err)
	defer anon.Close()
	_, err = anon.Get(ctx, "podmesh/v1/heartbeat/east")
	require.ErrorIs(t, err, rpctypes.ErrUserEmpty)
}

func TestRestartKeepsDataAndRotatesPasswords(t *testing.T) {
	skipShort(t)
	ctx := t.Context()
	dir := t.TempDir()
	s1, err := Start(ctx, Config{DataDir: dir, UnsafeNoFsync: true, Log: testLog(t), EtcdLog: zap.NewNop()})
	require.NoError(t, err)
	put, err := s1.Writer.Put(ctx, "podmesh/v1/nodes/east/n1", "v")
	require.NoError(t, err)
	oldPW := s1.passwords[ReaderUser]
	oldRoot, err := os.ReadFile(filepath.Join(dir, rootPasswordFile))
	require.NoError(t, err)
	require.NoError(t, s1.Close())

	s2, err := Start(ctx, Config{DataDir: dir, UnsafeNoFsync: true, Log: testLog(t), EtcdLog: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { s2.Close() })
	resp, err := s2.Reader.Get(ctx, "podmesh/v1/nodes/east/n1")
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "data survives a restart")
	require.Equal(t, put.Header.Revision, resp.Kvs[0].ModRevision, "revisions continue across a restart")
	require.NotEqual(t, oldPW, s2.passwords[ReaderUser], "reader password rotated")
	newRoot, err := os.ReadFile(filepath.Join(dir, rootPasswordFile))
	require.NoError(t, err)
	require.NotEqual(t, string(oldRoot), string(newRoot), "root password rotated")

	_, err = clientv3.New(clientv3.Config{Endpoints: []string{s2.Endpoint}, Username: ReaderUser, Password: oldPW})
	require.ErrorIs(t, err, rpctypes.ErrAuthFailed, "old password no longer works")
}

func TestLostRootPasswordRebuildsDataDir(t *testing.T) {
	skipShort(t)
	ctx := t.Context()
	dir := t.TempDir()
	s1, err := Start(ctx, Config{DataDir: dir, UnsafeNoFsync: true, Log: testLog(t), EtcdLog: zap.NewNop()})
	require.NoError(t, err)
	_, err = s1.Writer.Put(ctx, "podmesh/v1/nodes/east/n1", "v")
	require.NoError(t, err)
	require.NoError(t, s1.Close())
	require.NoError(t, os.WriteFile(filepath.Join(dir, rootPasswordFile), []byte("wrong"), 0o600))

	s2, err := Start(ctx, Config{DataDir: dir, UnsafeNoFsync: true, Log: testLog(t), EtcdLog: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { s2.Close() })
	resp, err := s2.Reader.Get(ctx, "podmesh/v1/nodes/east/n1")
	require.NoError(t, err)
	require.Empty(t, resp.Kvs, "a data directory we cannot administer is rebuilt empty")
}

func TestStartRefusesNonLoopbackListen(t *testing.T) {
	_, err := Start(context.Background(), Config{DataDir: t.TempDir(), ListenClient: "0.0.0.0:2379"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "loopback")
	require.False(t, errors.Is(err, errRootLogin))
}

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an embedded etcd")
	}
}
