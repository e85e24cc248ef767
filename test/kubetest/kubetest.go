package kubetest

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/internal/netnsutil"
)

// Options configure StartServer.
type Options struct {
	// Dir holds certificates, data and logs. Required.
	Dir string
	// BindAddress is where kube-apiserver listens; default 127.0.0.1.
	BindAddress netip.Addr
	// Port of kube-apiserver; 0 picks a free port (host namespace) or 6443
	// (inside NetNSPath).
	Port int
	// EtcdPort is the etcd client port on 127.0.0.1; 0 picks one as for Port.
	EtcdPort int
	// EtcdPeerPort is etcd's peer port on 127.0.0.1; 0 picks a free one.
	EtcdPeerPort int
	// NetNSPath, when set, runs both processes inside that network namespace.
	NetNSPath string
	// Log receives the processes' output; nil writes it to files in Dir.
	Log io.Writer
	// ExtraAPIServerArgs are appended to kube-apiserver's arguments.
	ExtraAPIServerArgs []string
	// BinDir holds the binaries; default BinDir().
	BinDir string
	// ControlPlane makes a control plane that real kubelets can join (see
	// controlplane.go): ServiceAccount admission, Node,RBAC authorization,
	// NodeRestriction, the lease endpoint reconciler, and a
	// kube-controller-manager and kube-scheduler next to the API server.
	ControlPlane bool
}

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	// Config is an admin (system:masters) client config.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Kubeconfig is the path of an admin kubeconfig file. Inside NetNSPath it
	// works as it is; from elsewhere use Config, which knows how to dial.
	Kubeconfig string
	// URL is the API server's https URL.
	URL string
	// CA is the cluster CA, which signs the serving and client certificates.
	CA *certs.CA

	dir   string
	procs []*proc
	logs  []string
	pki   *pki
	// controlPlane is Options.ControlPlane.
	controlPlane bool
}

// proc is a started process; done is closed once it has exited.
type proc struct {
	cmd  *exec.Cmd
	name string
	done chan struct{}
	err  error
}

// Start runs a server for a test in a temporary directory and stops it when
// the test ends. It fails the test if bin/kube-apiserver or bin/etcd are
// missing (run `make tools`).
func Start(tb testing.TB) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	// freePort's port (and the etcd peer port after it) can be taken by
	// another process between picking and binding; try again then.
	var s *Server
	var err error
	for attempt := 1; ; attempt++ {
		s, err = StartServer(ctx, Options{Dir: tb.TempDir()})
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		tb.Logf("start kube-apiserver: a picked port was taken meanwhile; retrying (attempt %d)", attempt)
	}
	if err != nil {
		tb.Fatalf("start kube-apiserver: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			s.dumpLogs(tb)
		}
		if err := s.Stop(); err != nil {
			tb.Logf("stop kube-apiserver: %v", err)
		}
	})
	return s
}

// BinDir returns the directory holding the test tools: $PODMESH_BIN, or bin/
// at the root of the podmesh module found from the working directory.
func BinDir() (string, error) {
	if d := os.Getenv("PODMESH_BIN"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/podmesh/podmesh\n")) {
			return filepath.Join(dir, "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find bin/: no podmesh go.mod above the working directory (set PODMESH_BIN)")
		}
		dir = parent
	}
}

// StartServer starts etcd and kube-apiserver and waits until the API server
// is ready. On error everything started is stopped again.
func StartServer(ctx context.Context, o Options) (_ *Server, err error) {
	if o.Dir == "" {
		return nil, errors.New("start kube-apiserver: no directory")
	}
	if !o.BindAddress.IsValid() {
		o.BindAddress = netip.MustParseAddr("127.0.0.1")
	}
	bin := o.BinDir
	if bin == "" {
		if bin, err = BinDir(); err != nil {
			return nil, err
		}
	}
	tools := []string{"etcd", "kube-apiserver"}
	if o.ControlPlane {
		tools = append(tools, "kube-controller-manager", "kube-scheduler")
	}
	for _, b := range tools {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return nil, fmt.Errorf("find test tool %s: %w (run `make tools`)", b, err)
		}
	}
	if err := pickPorts(o, &o.Port, &o.EtcdPort, &o.EtcdPeerPort); err != nil {
		return nil, err
	}
	s := &Server{dir: o.Dir, controlPlane: o.ControlPlane}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	pki, err := writePKI(o)
	if err != nil {
		return nil, err
	}
	s.CA = pki.ca
	s.pki = pki

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", o.EtcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", o.EtcdPeerPort)
	if err := s.start(o, filepath.Join(bin, "etcd"), "etcd",
		"--name=kubetest",
		"--data-dir="+filepath.Join(o.Dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--unsafe-no-fsync",
		"--log-level=warn",
	); err != nil {
		return nil, err
	}

	hostPort := net.JoinHostPort(o.BindAddress.String(), strconv.Itoa(o.Port))
	s.URL = "https://" + hostPort
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + o.BindAddress.String(),
		"--advertise-address=" + o.BindAddress.String(),
		"--secure-port=" + strconv.Itoa(o.Port),
		"--tls-cert-file=" + pki.serverCert,
		"--tls-private-key-file=" + pki.serverKey,
		"--client-ca-file=" + pki.caCert,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + pki.saPub,
		"--service-account-signing-key-file=" + pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		"--disable-admission-plugins=ServiceAccount",
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--cert-dir=" + filepath.Join(o.Dir, "apiserver-certs"),
		"--v=0",
	}
	if o.ControlPlane {
		args = controlPlaneAPIServerArgs(args, pki)
	}
	if err := s.start(o, filepath.Join(bin, "kube-apiserver"), "kube-apiserver", append(args, o.ExtraAPIServerArgs...)...); err != nil {
		return nil, err
	}

	cfg := &rest.Config{
		Host: s.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   pki.ca.CertPEM,
			CertData: pki.admin.CertPEM,
			KeyData:  pki.admin.KeyPEM,
		},
		QPS:   1000,
		Burst: 2000,
	}
	if o.NetNSPath != "" {
		cfg.Dial = DialInNetNS(o.NetNSPath)
	}
	s.Config = cfg
	if s.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("build clientset: %w", err)
	}
	if s.Kubeconfig, err = writeKubeconfig(o.Dir, s.URL, pki); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	if o.ControlPlane {
		if err := s.startControllers(o, bin); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// start launches one process, in the netns when configured. The process is
// killed if the test binary dies (Pdeathsig).
func (s *Server) start(o Options, bin, name string, args ...string) error {
	argv := append([]string{bin}, args...)
	if o.NetNSPath != "" {
		argv = append([]string{"nsenter", "--net=" + o.NetNSPath, "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if o.Log != nil {
		cmd.Stdout, cmd.Stderr = o.Log, o.Log
	} else {
		path := filepath.Join(o.Dir, name+".log")
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("create log %s: %w", path, err)
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
		s.logs = append(s.logs, path)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, name: name, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.procs = append(s.procs, p)
	return nil
}

func (s *Server) waitReady(ctx context.Context) error {
	rt, err := rest.TransportFor(s.Config)
	if err != nil {
		return fmt.Errorf("build transport: %w", err)
	}
	hc := &http.Client{Transport: rt, Timeout: 5 * time.Second}
	var last error
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
		for _, p := range s.procs {
			select {
			case <-p.done:
				return false, fmt.Errorf("%s exited: %v%s", p.name, p.err, s.logTails())
			default:
			}
		}
		resp, err := hc.Get(s.URL + "/readyz")
		if err != nil {
			last = err
			return false, nil
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			last = fmt.Errorf("readyz %d: %s", resp.StatusCode, lastLines(string(body), 5))
			return false, nil
		}
		return true, nil
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("wait for kube-apiserver %s to be ready: %w (last: %v)%s", s.URL, ctx.Err(), last, s.logTails())
	}
	return err
}

// Stop kills kube-apiserver, then etcd, and waits for both.
func (s *Server) Stop() error {
	var errs []error
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		pid := p.cmd.Process.Pid
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			// In ControlPlane mode kube-apiserver's graceful shutdown
			// (lease and endpoint clean-up, draining watches of
			// components already gone) can outlast the grace period;
			// the whole control plane is thrown away, so that is no error.
			if !s.controlPlane || p.name != "kube-apiserver" {
				errs = append(errs, fmt.Errorf("%s did not stop on SIGTERM within 10s; killed", p.name))
			}
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-p.done
		}
	}
	s.procs = nil
	return errors.Join(errs...)
}

func (s *Server) logTails() string {
	var b strings.Builder
	for _, path := range s.logs {
		if data, err := os.ReadFile(path); err == nil {
			fmt.Fprintf(&b, "\n--- %s:\n%s", path, lastLines(string(data), 15))
		}
	}
	return b.String()
}

func (s *Server) dumpLogs(tb testing.TB) {
	for _, path := range s.logs {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		tb.Logf("--- last lines of %s:\n%s", path, lastLines(string(data), 30))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type pki struct {
	ca                            *certs.CA
	admin                         *certs.KeyPair
	caCert, serverCert, serverKey string
	saKey, saPub                  string
	adminCertFile, adminKeyFile   string
}

func writePKI(o Options) (*pki, error) {
	dir := filepath.Join(o.Dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	ca, err := certs.NewCA(certs.Options{CommonName: "kubetest-ca"})
	if err != nil {
		return nil, err
	}
	server, err := ca.IssueServer(certs.Options{
		CommonName:  "kube-apiserver",
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IP(o.BindAddress.AsSlice()), net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
	})
	if err != nil {
		return nil, err
	}
	admin, err := ca.IssueClient(certs.Options{CommonName: "kubetest-admin", Organization: []string{"system:masters"}})
	if err != nil {
		return nil, err
	}
	sa, err := ca.IssueClient(certs.Options{CommonName: "service-account-signer"})
	if err != nil {
		return nil, err
	}
	p := &pki{
		ca: ca, admin: admin,
		caCert:        filepath.Join(dir, "ca.crt"),
		serverCert:    filepath.Join(dir, "apiserver.crt"),
		serverKey:     filepath.Join(dir, "apiserver.key"),
		saKey:         filepath.Join(dir, "sa.key"),
		saPub:         filepath.Join(dir, "sa.pub"),
		adminCertFile: filepath.Join(dir, "admin.crt"),
		adminKeyFile:  filepath.Join(dir, "admin.key"),
	}
	if err := os.WriteFile(p.caCert, ca.CertPEM, 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", p.caCert, err)
	}
	if err := server.WriteFiles(p.serverCert, p.serverKey, true); err != nil {
		return nil, err
	}
	if err := admin.WriteFiles(p.adminCertFile, p.adminKeyFile, true); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.saKey, sa.KeyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", p.saKey, err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(sa.Key.Public())
	if err != nil {
		return nil, fmt.Errorf("marshal service-account public key: %w", err)
	}
	if err := os.WriteFile(p.saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", p.saPub, err)
	}
	return p, nil
}

func writeKubeconfig(dir, url string, p *pki) (string, error) {
	path := filepath.Join(dir, "admin.kubeconfig")
	return path, writeKubeconfigFile(path, url, p.ca.CertPEM, p.admin)
}

// writeKubeconfigFile writes a kubeconfig that authenticates with kp's
// client certificate.
func writeKubeconfigFile(path, url string, caPEM []byte, kp *certs.KeyPair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: url, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificateData: kp.CertPEM, ClientKeyData: kp.KeyPEM}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "user"}
	cfg.CurrentContext = "kubetest"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// pickPorts fills each zero port with a free one, distinct from the others.
func pickPorts(o Options, ports ...*int) error {
	used := map[int]bool{}
	for _, p := range ports {
		used[*p] = *p != 0
	}
	for _, p := range ports {
		for *p == 0 {
			port, err := freePort(o)
			if err != nil {
				return err
			}
			if !used[port] {
				*p, used[port] = port, true
			}
		}
	}
	return nil
}

// freePort asks the kernel for an unused TCP port in the namespace the
// server will run in. The port is free when returned; a process that takes
// it before etcd or kube-apiserver binds makes the start fail loudly.
func freePort(o Options) (int, error) {
	var port int
	err := InNetNS(o.NetNSPath, func() error {
		l, err := net.Listen("tcp", net.JoinHostPort(o.BindAddress.String(), "0"))
		if err != nil {
			return fmt.Errorf("pick a free port: %w", err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	})
	return port, err
}

// InNetNS runs fn on a thread that has entered the network namespace at path
// (the current one when path is empty). The thread is returned to its
// original namespace afterwards, or discarded if that fails.
func InNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return netnsutil.DoPath(path, fn)
}

// DialInNetNS returns a dial function whose sockets are created inside the
// network namespace at path. A socket keeps its namespace for its lifetime,
// so the connection works from any thread afterwards.
func DialInNetNS(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := InNetNS(path, func() error {
			var err error
			conn, err = (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// ParseCertPEM is a small helper for tests that inspect issued certificates.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParseCertificate(b.Bytes)
}
