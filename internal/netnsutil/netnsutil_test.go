package netnsutil_test

import (
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"

	"github.com/podmesh/podmesh/internal/netnsutil"
	"github.com/podmesh/podmesh/internal/testutils"
)

func TestDoRunsInsideTheNamespaceAndReturnsFnsError(t *testing.T) {
	testutils.RequireRoot(t)
	ns := testutils.NewNetNS(t, "nsu")
	path := ns.Path()
	target, err := netns.GetFromPath(path)
	require.NoError(t, err)
	defer target.Close()

	var inside bool
	require.NoError(t, netnsutil.DoPath(path, func() error {
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
	require.ErrorIs(t, netnsutil.Do(target, func() error { return boom }), boom)

	_, err = os.Stat(path)
	require.NoError(t, err)
	require.ErrorContains(t, netnsutil.DoPath(path+"-missing", func() error { return nil }), "open netns")
}
