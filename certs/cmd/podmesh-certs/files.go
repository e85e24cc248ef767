package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// caCNPrefix starts the CN of every cluster CA; the rest is the cluster name.
const caCNPrefix = "podmesh-ca-"

// layout is the directory convention of one cluster (see doc.go).
type layout struct{ dir string }

func (l layout) caCert() string       { return filepath.Join(l.dir, "ca.crt") }
func (l layout) caKey() string        { return filepath.Join(l.dir, "ca.key") }
func (l layout) serverCert() string   { return filepath.Join(l.dir, "server.crt") }
func (l layout) serverKey() string    { return filepath.Join(l.dir, "server.key") }
func (l layout) peersDir() string     { return filepath.Join(l.dir, "peers") }
func (l layout) allowedPeers() string { return filepath.Join(l.dir, "allowed-peers") }
func (l layout) peerCert(peer string) string {
	return filepath.Join(l.peersDir(), peer+".crt")
}
func (l layout) peerKey(peer string) string {
	return filepath.Join(l.peersDir(), peer+".key")
}

// readFile reads path and says what the file was for when it cannot:
// "read CA key /x/ca.key: permission denied".
func readFile(what, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, bare(err))
	}
	return data, nil
}

// bare strips the *fs.PathError around err, whose text repeats the path the
// caller's message already names; errors.Is still sees the cause.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// loadCert reads and parses one PEM certificate.
func loadCert(what, path string) (*x509.Certificate, error) {
	data, err := readFile(what, path)
	if err != nil {
		return nil, err
	}
	cert, err := certs.ParseCertificatePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return cert, nil
}

// loadPair reads a certificate and its key and checks that they belong
// together.
func loadPair(what, certPath, keyPath string) (*certs.KeyPair, error) {
	certPEM, err := readFile(what+" certificate", certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(what+" key", keyPath)
	if err != nil {
		return nil, err
	}
	kp, err := certs.ParseKeyPair(certPEM, keyPEM, certPath, keyPath)
	if err != nil {
		return nil, err
	}
	if err := certs.KeyMatches(kp.Cert, kp.Key); err != nil {
		return nil, fmt.Errorf("key %s does not match certificate %s", keyPath, certPath)
	}
	return kp, nil
}

// clusterCA is a loaded CA with the cluster name from its subject.
type clusterCA struct {
	cluster string
	cert    *x509.Certificate
	ca      *certs.CA // nil when only the certificate was loaded
}

func clusterFromCA(path string, cert *x509.Certificate) (string, error) {
	if !cert.IsCA {
		return "", fmt.Errorf("certificate %s is not a CA", path)
	}
	name, ok := strings.CutPrefix(cert.Subject.CommonName, caCNPrefix)
	if !ok {
		return "", fmt.Errorf("CA %s: subject CN %q does not start with %q (was it created by podmesh-certs init?)", path, cert.Subject.CommonName, caCNPrefix)
	}
	if err := meshapi.ValidateClusterName(name); err != nil {
		return "", fmt.Errorf("CA %s: %w", path, err)
	}
	return name, nil
}

// loadCACert loads ca.crt only (enough to check, not to sign).
func (l layout) loadCACert(now time.Time) (*clusterCA, error) {
	cert, err := loadCert("CA certificate", l.caCert())
	if err != nil {
		return nil, err
	}
	name, err := clusterFromCA(l.caCert(), cert)
	if err != nil {
		return nil, err
	}
	if err := certs.CheckValidity(cert, now); err != nil {
		return nil, fmt.Errorf("CA %s %w", l.caCert(), err)
	}
	return &clusterCA{cluster: name, cert: cert}, nil
}

// loadCA loads ca.crt and ca.key, ready to sign.
func (l layout) loadCA(now time.Time) (*clusterCA, error) {
	kp, err := loadPair("CA", l.caCert(), l.caKey())
	if err != nil {
		return nil, err
	}
	name, err := clusterFromCA(l.caCert(), kp.Cert)
	if err != nil {
		return nil, err
	}
	if err := certs.CheckValidity(kp.Cert, now); err != nil {
		return nil, fmt.Errorf("CA %s %w", l.caCert(), err)
	}
	return &clusterCA{cluster: name, cert: kp.Cert, ca: &certs.CA{KeyPair: *kp}}, nil
}

// verifyLeaf checks a leaf certificate against the CA and names both files.
func verifyLeaf(ca *clusterCA, caPath, certPath string, cert *x509.Certificate, now time.Time, usage x509.ExtKeyUsage) error {
	err := certs.VerifyIssued(ca.cert, cert, now, usage)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, certs.ErrNotSignedByCA):
		return fmt.Errorf("certificate %s not signed by CA %s: %w", certPath, caPath, err)
	default:
		return fmt.Errorf("certificate %s %w", certPath, err)
	}
}

// refuseExisting fails when any of paths exists and force is not set, before
// anything is written, so a refused command leaves no half-written pair.
func refuseExisting(force bool, paths ...string) error {
	if force {
		return nil
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("write %s: %w", p, certs.ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", p, bare(err))
		}
	}
	return nil
}

// writeAtomic writes data to path through a temporary file in the same
// directory and a rename, so a reader never sees a partial file.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, bare(err))
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, bare(err))
	}
	return nil
}

// readAllowedPeers reads the allow-list file; a missing file is empty.
func (l layout) readAllowedPeers() ([]string, error) {
	data, err := os.ReadFile(l.allowedPeers())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read allow-list %s: %w", l.allowedPeers(), bare(err))
	}
	var cns []string
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		peer, ok := strings.CutPrefix(line, certs.PeerCN(""))
		if !ok || meshapi.ValidateClusterName(peer) != nil {
			return nil, fmt.Errorf("allow-list %s line %d: %q is not remote-<cluster>", l.allowedPeers(), i+1, line)
		}
		cns = append(cns, line)
	}
	return cns, nil
}

// addAllowedPeer adds cn to the allow-list file (kept sorted and unique).
func (l layout) addAllowedPeer(cn string) ([]string, error) {
	cns, err := l.readAllowedPeers()
	if err != nil {
		return nil, err
	}
	set := map[string]bool{cn: true}
	for _, c := range cns {
		set[c] = true
	}
	cns = cns[:0]
	for c := range set {
		cns = append(cns, c)
	}
	sort.Strings(cns)
	body := "# CNs the clustermesh-apiserver of this cluster accepts (--allowed-peers); written by podmesh-certs connect\n" +
		strings.Join(cns, "\n") + "\n"
	if err := writeAtomic(l.allowedPeers(), []byte(body), 0o644); err != nil {
		return nil, err
	}
	return cns, nil
}

// parseDuration accepts Go durations and whole days ("30d").
func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 32)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("invalid duration %q: negative", s)
	}
	return d, nil
}

// durationFlag is a flag.Value for parseDuration.
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	if *f.d%(24*time.Hour) == 0 && *f.d != 0 {
		return fmt.Sprintf("%dd", *f.d/(24*time.Hour))
	}
	return f.d.String()
}

func (f durationFlag) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

// listFlag collects a repeatable, comma-separable string flag.
type listFlag struct{ vals *[]string }

func (f listFlag) String() string {
	if f.vals == nil {
		return ""
	}
	return strings.Join(*f.vals, ",")
}

func (f listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*f.vals = append(*f.vals, v)
		}
	}
	return nil
}

// keyTypeFlag parses --key-type.
type keyTypeFlag struct{ kt *certs.KeyType }

func (f keyTypeFlag) String() string {
	if f.kt == nil {
		return ""
	}
	return string(*f.kt)
}

func (f keyTypeFlag) Set(s string) error {
	kt, err := certs.ParseKeyType(s)
	if err != nil {
		return err
	}
	*f.kt = kt
	return nil
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }
