package testutils

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
)

func TestNewNetNSIsPrivateAndRemovedAfterTheTest(t *testing.T) {
	RequireRoot(t)
	var path string
	t.Run("inner", func(t *testing.T) {
		ns := NewNetNS(t, "tu")
		path = ns.Path()
		require.FileExists(t, path)
		var links []netlink.Link
		require.NoError(t, ns.Do(func() error {
			var err error
			links, err = netlink.LinkList()
			return err
		}))
		require.Len(t, links, 1, "a fresh namespace holds only lo")
		require.Equal(t, "lo", links[0].Attrs().Name)
	})
	_, err := os.Stat(path)
	require.ErrorIs(t, err, os.ErrNotExist, "the namespace is deleted when its test ends")
}
