package kvstore_test

import (
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/podmesh/podmesh/pkg/kvstore"
)

// FuzzLoadConfig feeds arbitrary documents to the config-directory parser
// (one etcd-client YAML file of a mounted Secret, beside real PEM files):
// no input may panic, and whatever it accepts names at least one http(s)
// endpoint with a host, certificate and key together, a CA for https, and
// a TLS configuration whenever it names TLS material.
func FuzzLoadConfig(f *testing.F) {
	f.Add([]byte(goodYAML))
	f.Add([]byte(goodYAML + "dial-timeout: 5s\n"))
	f.Add([]byte("endpoints: [http://127.0.0.1:2379]\n"))
	f.Add([]byte("endpoints:\n- https://[::1]:2379\ntrusted-ca-file: ca.crt\n"))
	f.Add([]byte("endpoints: https://a:1\ncert-file: client.crt\n"))
	f.Add([]byte("{\"endpoints\":[\"https://x\"],\"trusted-ca-file\":\"../ca.crt\"}"))
	f.Add([]byte("endpoints: [\"%zz\"]\n"))
	dir := f.TempDir()
	writePKI(f, dir)
	log := logrus.New()
	log.SetOutput(os.Stderr)
	log.SetLevel(logrus.PanicLevel)
	path := filepath.Join(dir, "east")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := kvstore.LoadConfig(path, log)
		if err != nil {
			return
		}
		if len(c.Endpoints) == 0 {
			t.Fatal("accepted a config without endpoints")
		}
		https := false
		for _, e := range c.Endpoints {
			u, err := url.Parse(e)
			if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
				t.Fatalf("accepted endpoint %q", e)
			}
			https = https || u.Scheme == "https"
		}
		if (c.CertFile == "") != (c.KeyFile == "") {
			t.Fatalf("accepted cert-file %q without key-file %q", c.CertFile, c.KeyFile)
		}
		if https && c.TrustedCAFile == "" {
			t.Fatal("accepted https endpoints without a trusted CA")
		}
		for _, p := range []string{c.TrustedCAFile, c.CertFile, c.KeyFile} {
			if p != "" && !filepath.IsAbs(p) {
				t.Fatalf("path %q left relative", p)
			}
		}
		if (https || c.CertFile != "") && c.TLS == nil {
			t.Fatal("accepted TLS settings without a TLS configuration")
		}
	})
}
