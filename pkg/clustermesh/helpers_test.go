package clustermesh_test

import (
	"maps"
	"net/netip"
	"strings"
	"testing"

	cmt "github.com/podmesh/podmesh/pkg/clustermesh/clustermeshtest"
	"github.com/podmesh/podmesh/pkg/datapath"
)

type (
	netipPrefix   = netip.Prefix
	datapathEntry = datapath.Entry
	netipAddr     = netip.Addr
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }

func copyEntries(m map[netip.Prefix]datapath.Entry) map[netip.Prefix]datapath.Entry {
	return maps.Clone(m)
}

func add(m map[netip.Prefix]datapath.Entry, cluster string, id uint32, pairs ...string) map[netip.Prefix]datapath.Entry {
	maps.Copy(m, want(cluster, id, pairs...))
	return m
}

func newConfigDirWith(t *testing.T, files map[string][]byte) *cmt.ConfigDir {
	t.Helper()
	d := cmt.NewConfigDir(t)
	d.Set(t, files)
	return d
}

// tlsWords are what a refusal for a certificate problem must mention.
var tlsWords = []string{"certificate", "x509", "tls", "authority", "not allowed"}

func mentionsTLS(s string) bool {
	s = strings.ToLower(s)
	for _, w := range tlsWords {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}
