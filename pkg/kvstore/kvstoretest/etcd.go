package kvstoretest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/pkg/kvstore"
)

// Etcd is an embedded etcd serving clients with mutual TLS.
type Etcd struct {
	// Name labels the server in errors and certificates.
	Name string
	// CA issued the server certificate and signs client certificates.
	CA *certs.CA
	// CAFile is the CA certificate in PEM, for trusted-ca-file.
	CAFile string
	// Endpoint is https://127.0.0.1:<port>.
	Endpoint string
	// Addr is the host:port of Endpoint.
	Addr string
	// Client is an admin client connected directly (not through a proxy).
	Client *clientv3.Client

	dir  string
	etcd *embed.Etcd
}

// StartEtcd starts an embedded etcd for the duration of the test.
func StartEtcd(tb testing.TB, name string) *Etcd {
	tb.Helper()
	ca, err := certs.NewCA(certs.Options{CommonName: name + "-ca"})
	if err != nil {
		tb.Fatalf("create CA: %v", err)
	}
	return startEtcd(tb, name, ca)
}

// Rebuilt starts another etcd of the same name and CA with empty data, on a
// new port: what a client finds behind an address whose server was replaced
// and lost its data (an emptyDir etcd in a new pod). Its history starts
// again at revision 1, so a watch resumed from s's revisions waits there for
// a future that has nothing to do with s.
func (s *Etcd) Rebuilt(tb testing.TB) *Etcd {
	tb.Helper()
	return startEtcd(tb, s.Name, s.CA)
}

func startEtcd(tb testing.TB, name string, ca *certs.CA) *Etcd {
	dir := tb.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		tb.Fatalf("write CA: %v", err)
	}
	srv, err := ca.IssueServer(certs.Options{CommonName: name + "-etcd", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}})
	if err != nil {
		tb.Fatalf("issue server certificate: %v", err)
	}
	srvCert, srvKey := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := srv.WriteFiles(srvCert, srvKey, false); err != nil {
		tb.Fatalf("write server certificate: %v", err)
	}

	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = filepath.Join(dir, "data")
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	lc, _ := url.Parse("https://127.0.0.1:0")
	// The peer URL is never dialled (one member) but must parse inside
	// InitialCluster, so it lives in a short path without commas.
	sockDir, err := os.MkdirTemp("", "etcdpeer")
	if err != nil {
		tb.Fatalf("create socket directory: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(sockDir) })
	lp, _ := url.Parse("unix://" + filepath.Join(sockDir, "peer.sock"))
	cfg.ListenClientUrls = []url.URL{*lc}
	cfg.AdvertiseClientUrls = []url.URL{*lc}
	cfg.ListenPeerUrls = []url.URL{*lp}
	cfg.AdvertisePeerUrls = []url.URL{*lp}
	cfg.InitialCluster = cfg.InitialClusterFromName(name)
	cfg.ClientTLSInfo.CertFile = srvCert
	cfg.ClientTLSInfo.KeyFile = srvKey
	cfg.ClientTLSInfo.TrustedCAFile = caFile
	cfg.ClientTLSInfo.ClientCertAuth = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		tb.Fatalf("start etcd %s: %v", name, err)
	}
	tb.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		tb.Fatalf("etcd %s not ready after 30s", name)
	}
	addr := e.Clients[0].Addr().String()
	s := &Etcd{Name: name, CA: ca, CAFile: caFile, Endpoint: "https://" + addr, Addr: addr, dir: dir, etcd: e}

	admin := s.WriteClientFiles(tb, dir, "admin", "admin")
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint}, TLS: admin.tls(tb, s), DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatalf("connect admin client to %s: %v", name, err)
	}
	tb.Cleanup(func() { cli.Close() })
	s.Client = cli
	return s
}

// ClientFiles are PEM files of one client certificate.
type ClientFiles struct{ CertFile, KeyFile string }

// WriteClientFiles issues a client certificate with CN cn and writes it to
// dir as <base>.crt and <base>.key (0600).
func (s *Etcd) WriteClientFiles(tb testing.TB, dir, base, cn string) ClientFiles {
	tb.Helper()
	kp, err := s.CA.IssueClient(certs.Options{CommonName: cn})
	if err != nil {
		tb.Fatalf("issue client certificate %s: %v", cn, err)
	}
	f := ClientFiles{CertFile: filepath.Join(dir, base+".crt"), KeyFile: filepath.Join(dir, base+".key")}
	if err := kp.WriteFiles(f.CertFile, f.KeyFile, true); err != nil {
		tb.Fatalf("write client certificate: %v", err)
	}
	return f
}

// ClientYAML renders etcd-client YAML for endpoint with the given file names
// (written as given, so relative names stay relative).
func ClientYAML(endpoint, caFile, certFile, keyFile string) []byte {
	b, err := yaml.Marshal(kvstore.ClientFile{Endpoints: []string{endpoint}, TrustedCAFile: caFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		panic(fmt.Sprintf("marshal etcd-client YAML: %v", err)) // a struct of strings always marshals
	}
	return b
}

// Put writes a key with the admin client.
func (s *Etcd) Put(tb testing.TB, key, value string) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.Client.Put(ctx, key, value)
	if err != nil {
		tb.Fatalf("put %s: %v", key, err)
	}
	return resp.Header.Revision
}

// Delete removes a key (or every key under it with prefix) with the admin client.
func (s *Etcd) Delete(tb testing.TB, key string, prefix bool) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var opts []clientv3.OpOption
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	resp, err := s.Client.Delete(ctx, key, opts...)
	if err != nil {
		tb.Fatalf("delete %s: %v", key, err)
	}
	return resp.Header.Revision
}

// Compact compacts the history up to the current revision.
func (s *Etcd) Compact(tb testing.TB) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.Client.Get(ctx, "compact-probe")
	if err != nil {
		tb.Fatalf("get revision: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := s.Client.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		tb.Fatalf("compact to %d: %v", rev, err)
	}
	return rev
}
