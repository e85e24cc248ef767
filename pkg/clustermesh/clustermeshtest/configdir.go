package clustermeshtest

import (
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/pkg/kvstore/kvstoretest"
)

// ConfigDir is the agent's config directory, written like a kubelet Secret
// volume: every update is an atomic ..data swap.
type ConfigDir struct {
	Dir   string
	files map[string][]byte
}

// NewConfigDir creates an empty config directory.
func NewConfigDir(tb testing.TB) *ConfigDir {
	tb.Helper()
	d := &ConfigDir{Dir: filepath.Join(tb.TempDir(), "clustermesh"), files: make(map[string][]byte)}
	d.Write(tb)
	return d
}

// Files returns a copy of the current content, to be changed and passed to Set.
func (d *ConfigDir) Files() map[string][]byte { return maps.Clone(d.files) }

// Set replaces the whole content in one swap.
func (d *ConfigDir) Set(tb testing.TB, files map[string][]byte) {
	tb.Helper()
	d.files = maps.Clone(files)
	d.Write(tb)
}

// Write swaps the current content in.
func (d *ConfigDir) Write(tb testing.TB) {
	tb.Helper()
	if err := certs.WriteSecretVolume(d.Dir, d.files); err != nil {
		tb.Fatalf("write config directory: %v", err)
	}
}

// RemoteFiles returns the files a remote's Secret entry consists of: the
// etcd-client YAML <name> (pointing at the remote's forwarder), <name>.crt
// and <name>.key (a client certificate with CN cn issued by ca, which the
// remote trusts unless it is another CA) and <name>-ca.crt.
func RemoteFiles(tb testing.TB, r *Remote, ca *certs.CA, cn string) map[string][]byte {
	tb.Helper()
	if ca == nil {
		ca = r.Etcd.CA
	}
	kp, err := ca.IssueClient(certs.Options{CommonName: cn})
	if err != nil {
		tb.Fatalf("issue client certificate: %v", err)
	}
	caPEM, err := os.ReadFile(r.Etcd.CAFile)
	if err != nil {
		tb.Fatalf("read CA: %v", err)
	}
	n := r.Name()
	return map[string][]byte{
		n:             kvstoretest.ClientYAML("https://"+r.Fwd.Addr, n+"-ca.crt", n+".crt", n+".key"),
		n + ".crt":    kp.CertPEM,
		n + ".key":    kp.KeyPEM,
		n + "-ca.crt": caPEM,
	}
}

// Add adds (or replaces) a remote's files with a fresh client certificate.
func (d *ConfigDir) Add(tb testing.TB, r *Remote) {
	tb.Helper()
	maps.Copy(d.files, RemoteFiles(tb, r, nil, "remote-local"))
	d.Write(tb)
}

// Remove removes a remote's files.
func (d *ConfigDir) Remove(tb testing.TB, name string) {
	tb.Helper()
	for _, k := range []string{name, name + ".crt", name + ".key", name + "-ca.crt"} {
		delete(d.files, k)
	}
	d.Write(tb)
}
