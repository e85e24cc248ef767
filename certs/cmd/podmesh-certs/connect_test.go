package main

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/clustermesh-apiserver/etcdserver"
	"github.com/podmesh/podmesh/clustermesh-apiserver/proxy"
	"github.com/podmesh/podmesh/pkg/kvstore"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// startEtcd runs the clustermesh-apiserver's embedded etcd with one key in it.
func startEtcd(t *testing.T) *etcdserver.Server {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	e, err := etcdserver.Start(t.Context(), etcdserver.Config{DataDir: t.TempDir(), UnsafeNoFsync: true, Log: log, EtcdLog: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	_, err = e.Writer.Put(t.Context(), meshapi.ClusterConfigKey("east"), `{"name":"east"}`)
	require.NoError(t, err)
	return e
}

// startProxy serves the real read-only proxy on ln with the TLS files of l,
// admitting allowed, the way clustermesh-apiserver's flags --tls-cert,
// --tls-key, --tls-client-ca and --allowed-peers configure it.
func startProxy(t *testing.T, e *etcdserver.Server, ln net.Listener, l layout, allowed []string) *proxy.Metrics {
	t.Helper()
	tlsCfg, err := proxy.LoadServerTLS(l.serverCert(), l.serverKey(), l.caCert(), allowed)
	require.NoError(t, err)
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	m := proxy.NewMetrics()
	p, err := proxy.Start(t.Context(), proxy.Config{Listener: ln, TLS: tlsCfg, Client: e.Reader, Metrics: m, Log: log})
	require.NoError(t, err)
	t.Cleanup(p.Stop)
	return m
}

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded etcd and the proxy on loopback; skipped in -short mode")
	}
}

func listenLoopback(t *testing.T) (net.Listener, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() }) // the proxy closes it too; a second Close is harmless
	return ln, ln.Addr().(*net.TCPAddr).Port
}

// TestConnectSecretVolumeReachesProxy is the install path end to end: the
// Secret that connect renders, mounted as a real Secret volume, is loaded by
// the agent's config loader (pkg/kvstore), and its client reads through the
// real read-only proxy whose allow-list came from the same command.
func TestConnectSecretVolumeReachesProxy(t *testing.T) {
	skipShort(t)
	h := newHarness(t)
	root := t.TempDir()
	east := h.mesh(root)
	ln, port := listenLoopback(t)

	out := filepath.Join(root, "west-clustermesh.yaml")
	h.mustRun("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--out", out)
	h.mustRun("allowed-peers", "--dir", east.dir)
	allowed := strings.Split(strings.TrimSpace(h.stdout.String()), ",")
	require.Equal(t, []string{"remote-west"}, allowed)

	e := startEtcd(t)
	startProxy(t, e, ln, east, allowed)

	secret, err := readSecretFile(out)
	require.NoError(t, err)
	vol := filepath.Join(root, "var/lib/podmesh/clustermesh")
	require.NoError(t, certs.WriteSecretVolume(vol, secret.Data))

	cfg, err := kvstore.LoadConfig(filepath.Join(vol, "east"), logrus.New())
	require.NoError(t, err)
	require.Equal(t, []string{"https://127.0.0.1:" + strconv.Itoa(port)}, cfg.Endpoints)
	require.Equal(t, filepath.Join(vol, "east.crt"), cfg.CertFile, "relative paths resolve against the mounted directory")
	cli, err := kvstore.NewClient(cfg, kvstore.ClientOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { cli.Close() })
	resp, err := cli.Get(t.Context(), meshapi.ClusterConfigKey("east"))
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	require.Equal(t, `{"name":"east"}`, string(resp.Kvs[0].Value))

	// A rotated peer certificate reaches the agent through the atomic
	// ..data swap and still connects.
	h.mustRun("rotate", "--dir", east.dir, "--peer", "west", "--force")
	h.mustRun("connect", "--dir", east.dir, "--peer", "west", "--address", "127.0.0.1", "--port", strconv.Itoa(port), "--out", out, "--force")
	secret2, err := readSecretFile(out)
	require.NoError(t, err)
	require.NotEqual(t, secret.Data["east.crt"], secret2.Data["east.crt"])
	require.NoError(t, certs.WriteSecretVolume(vol, secret2.Data))
	cfg2, err := kvstore.LoadConfig(filepath.Join(vol, "east"), logrus.New())
	require.NoError(t, err)
	require.NotEqual(t, cfg.Hash, cfg2.Hash, "the agent sees a changed config")
	cli2, err := kvstore.NewClient(cfg2, kvstore.ClientOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { cli2.Close() })
	_, err = cli2.Get(t.Context(), meshapi.ClusterConfigKey("east"))
	require.NoError(t, err)
}

// TestTLSHandshakeRefusesBadCertificates lays out Secrets that connect would
// refuse to write (so they are built here by hand) and shows that the proxy,
// or the agent's side of the handshake, refuses them too, while
// `podmesh-certs verify --config` names the file at fault.
func TestTLSHandshakeRefusesBadCertificates(t *testing.T) {
	skipShort(t)
	now := time.Now()
	e := startEtcd(t)
	other, err := certs.NewCA(certs.Options{CommonName: "podmesh-ca-other"})
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		// client returns the client certificate to mount; server, when set,
		// replaces the proxy's serving certificate.
		client func(ca *certs.CA) (*certs.KeyPair, error)
		server func(ca *certs.CA) (*certs.KeyPair, error)
		// wantHandshake is in the client's handshake error; wantReason is the
		// proxy's handshake-failure metric label ("" when the client refuses).
		wantHandshake string
		wantReason    string
		// wantVerify is in the error of verify --config ("" when it passes).
		wantVerify string
	}{
		{
			name:          "expired client certificate",
			client:        clientCert(certs.Options{CommonName: "remote-west", NotBefore: now.Add(-48 * time.Hour), Validity: 24 * time.Hour}),
			wantHandshake: "expired certificate",
			wantReason:    proxy.ReasonExpired,
			wantVerify:    "east.crt expired at",
		},
		{
			name:          "not yet valid client certificate",
			client:        clientCert(certs.Options{CommonName: "remote-west", NotBefore: now.Add(48 * time.Hour)}),
			wantHandshake: "expired certificate", // TLS has one alert for both
			wantReason:    proxy.ReasonExpired,
			wantVerify:    "east.crt not yet valid",
		},
		{
			name: "client certificate signed by another CA",
			client: func(*certs.CA) (*certs.KeyPair, error) {
				return other.IssueClient(certs.Options{CommonName: "remote-west"})
			},
			// The proxy's CertificateRequest names its CA; Go's client then
			// withholds a certificate from another CA, so the proxy sees none.
			wantHandshake: "certificate required",
			wantReason:    proxy.ReasonNoCertificate,
			wantVerify:    "east.crt not signed by CA",
		},
		{
			name:          "peer not on the allow-list",
			client:        clientCert(certs.Options{CommonName: "remote-north"}),
			wantHandshake: "bad certificate",
			wantReason:    proxy.ReasonPeerNotAllowed,
		},
		{
			name:   "expired server certificate",
			client: clientCert(certs.Options{CommonName: "remote-west"}),
			server: func(ca *certs.CA) (*certs.KeyPair, error) {
				return ca.IssueServer(certs.Options{CommonName: "clustermesh-apiserver.east",
					IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: now.Add(-10 * time.Hour), Validity: time.Hour})
			},
			wantHandshake: "certificate has expired",
		},
		{
			name: "server certificate signed by another CA",
			server: func(*certs.CA) (*certs.KeyPair, error) {
				return other.IssueServer(certs.Options{CommonName: "clustermesh-apiserver.east", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
			},
			client:        clientCert(certs.Options{CommonName: "remote-west"}),
			wantHandshake: "certificate signed by unknown authority",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			root := t.TempDir()
			east := h.mesh(root)
			ca := loadTestCA(t, east)
			if tc.server != nil {
				kp, err := tc.server(ca)
				require.NoError(t, err)
				require.NoError(t, kp.WriteFiles(east.serverCert(), east.serverKey(), true))
			}
			ln, port := listenLoopback(t)
			m := startProxy(t, e, ln, east, []string{"remote-west"})

			client, err := tc.client(ca)
			require.NoError(t, err)
			files, err := meshSecretFiles("east", []string{proxyEndpoint("127.0.0.1", port)}, ca.CertPEM, client.CertPEM, client.KeyPEM)
			require.NoError(t, err)
			vol := filepath.Join(root, "clustermesh")
			require.NoError(t, certs.WriteSecretVolume(vol, files))

			err = h.run("verify", "--config", filepath.Join(vol, "east"))
			if tc.wantVerify == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, filepath.Join(vol, "east"))
				require.ErrorContains(t, err, tc.wantVerify)
			}

			// The agent's loader accepts the files (they parse); the
			// handshake is what refuses them.
			cfg, err := kvstore.LoadConfig(filepath.Join(vol, "east"), nil)
			require.NoError(t, err)
			err = handshake(t, cfg, "127.0.0.1:"+strconv.Itoa(port))
			require.ErrorContains(t, err, tc.wantHandshake)
			if tc.wantReason != "" {
				require.Eventually(t, func() bool {
					return counter(t, m, tc.wantReason) >= 1
				}, 30*time.Second, 10*time.Millisecond, "proxy counts the refusal as %s", tc.wantReason)
			}
		})
	}
}

func clientCert(o certs.Options) func(ca *certs.CA) (*certs.KeyPair, error) {
	return func(ca *certs.CA) (*certs.KeyPair, error) { return ca.IssueClient(o) }
}

// handshake dials addr with the agent's TLS configuration and returns the
// handshake error, including the alert a server sends after it has read the
// client's certificate (TLS 1.3 delivers that on the first read).
func handshake(t *testing.T, cfg *kvstore.Config, addr string) error {
	t.Helper()
	tlsCfg := cfg.TLS.Clone()
	tlsCfg.ServerName = "127.0.0.1"
	tlsCfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", addr, tlsCfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Guard against a hang only; a refused handshake returns at once. A
	// gRPC server speaks first (HTTP/2 SETTINGS) when the handshake was
	// accepted, so the read returns then too.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
	var buf [1]byte
	if _, err := conn.Read(buf[:]); err != nil {
		return err
	}
	return nil
}

// counter reads the proxy's handshake-failure counter for reason.
func counter(t *testing.T, m *proxy.Metrics, reason string) float64 {
	var pb dto.Metric
	require.NoError(t, m.HandshakeFailures.WithLabelValues(reason).Write(&pb))
	return pb.GetCounter().GetValue()
}
