package testutils

import (
	"os"
	"testing"
)

// RequireRoot skips tb, with the reason, unless it runs as root. Privileged
// tests also skip under -short, which is the unit tier's flag.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("privileged test: skipped under -short")
	}
	if os.Geteuid() != 0 {
		tb.Skip("privileged test: needs root to create network namespaces (run as root, e.g. make test)")
	}
}
