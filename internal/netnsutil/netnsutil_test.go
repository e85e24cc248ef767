package netnsutil

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
)

func TestDoRunsInsideTheNamespaceAndReturnsFnsError(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "podmesh-nsu-" + hex.EncodeToString(b)
	require.NoError(t, exec.Command("ip", "netns", "add", name).Run())
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	path := filepath.Join("/var/run/netns", name)
	target, err := netns.GetFromPath(path)
	require.NoError(t, err)
	defer target.Close()

	var inside bool
	require.NoError(t, DoPath(path, func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		inside = cur.Equal(target)
		return nil
	}))
	require.True(t, inside, "fn ran inside the namespace")

	boom := errors.New("boom")
	require.ErrorIs(t, Do(target, func() error { return boom }), boom)

	_, err = os.Stat(path)
	require.NoError(t, err)
	require.ErrorContains(t, DoPath(path+"-missing", func() error { return nil }), "open netns")
}
