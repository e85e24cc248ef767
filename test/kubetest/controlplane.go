package kubetest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/podmesh/podmesh/certs"
)

// controlPlaneAPIServerArgs turns the test-only API server's arguments into
// those of a control plane that real kubelets join: ServiceAccount admission
// back on (the signing key is already configured), Node and RBAC
// authorization with NodeRestriction, the default lease endpoint reconciler
// (so the kubernetes Service has endpoints for pods), and a client
// certificate for the API server's own calls to kubelets (logs, exec), which
// dial the nodes' InternalIP.
func controlPlaneAPIServerArgs(args []string, p *pki) []string {
	args = slices.DeleteFunc(args, func(a string) bool {
		return a == "--disable-admission-plugins=ServiceAccount" ||
			a == "--endpoint-reconciler-type=none" ||
			strings.HasPrefix(a, "--authorization-mode=")
	})
	return append(args,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-client-certificate="+p.adminCertFile,
		"--kubelet-client-key="+p.adminKeyFile,
		"--kubelet-preferred-address-types=InternalIP",
	)
}

// startControllers starts kube-controller-manager and kube-scheduler next to
// the API server, with the admin kubeconfig. KCM signs ServiceAccount tokens
// with the API server's key and publishes kube-root-ca.crt; node IPAM,
// cloud and route controllers are off (the lab assigns pod CIDRs itself).
func (s *Server) startControllers(o Options, bin string) error {
	flexDir := filepath.Join(o.Dir, "kcm-flex-volumes")
	if err := os.MkdirAll(flexDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", flexDir, err)
	}
	if err := s.start(o, filepath.Join(bin, "kube-controller-manager"), "kube-controller-manager",
		"--kubeconfig="+s.Kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0", // no health server: nothing may collide with another test's port
		"--service-account-private-key-file="+s.pki.saKey,
		"--root-ca-file="+s.pki.caCert,
		"--use-service-account-credentials=false",
		"--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
		"--flex-volume-plugin-dir="+flexDir,
		"--profiling=false",
		"--v=0",
	); err != nil {
		return err
	}
	return s.start(o, filepath.Join(bin, "kube-scheduler"), "kube-scheduler",
		"--kubeconfig="+s.Kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--profiling=false",
		"--v=0",
	)
}

// CAFile is the path of the cluster CA certificate (PEM).
func (s *Server) CAFile() string { return s.pki.caCert }

// NodeKubeconfig issues a kubelet client certificate for node name
// (CN system:node:<name>, O system:nodes, as the Node authorizer expects)
// and writes a kubeconfig for it; it returns the file's path.
func (s *Server) NodeKubeconfig(name string) (string, error) {
	return s.ClientKubeconfig("node-"+name, "system:node:"+name, "system:nodes")
}

// ClientKubeconfig issues a client certificate with the given CN and groups
// and writes a kubeconfig file <dir>/kubeconfigs/<file>.kubeconfig for it.
func (s *Server) ClientKubeconfig(file, cn string, groups ...string) (string, error) {
	kp, err := s.CA.IssueClient(certs.Options{CommonName: cn, Organization: groups})
	if err != nil {
		return "", fmt.Errorf("issue client certificate %s: %w", cn, err)
	}
	dir := filepath.Join(s.dir, "kubeconfigs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	path := filepath.Join(dir, file+".kubeconfig")
	return path, writeKubeconfigFile(path, s.URL, s.CA.CertPEM, kp)
}
