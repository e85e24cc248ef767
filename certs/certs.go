package certs

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// DefaultValidity is the validity of a certificate when none is given.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultLeafValidity = 365 * 24 * time.Hour
)

// PeerCN returns the client certificate CN a peer cluster presents.
func PeerCN(peerCluster string) string { return "remote-" + peerCluster }

// LocalCN is the CN of the client certificate cluster's own agents present
// to its cache proxy (the cache tier); it is never on the peers' allow-list.
func LocalCN(cluster string) string { return "local-" + cluster }

// Options describe one certificate.
type Options struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPAddresses  []net.IP
	// NotBefore defaults to one minute ago (clock skew).
	NotBefore time.Time
	// Validity defaults to DefaultLeafValidity (DefaultCAValidity for a CA).
	Validity time.Duration
	// KeyType of the new key; empty means KeyECDSAP256.
	KeyType KeyType
}

// KeyPair is a certificate with its private key, parsed and as PEM.
type KeyPair struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// CA is a KeyPair that signs.
type CA struct{ KeyPair }

// NewCA creates a self-signed CA.
func NewCA(o Options) (*CA, error) {
	if o.Validity == 0 {
		o.Validity = DefaultCAValidity
	}
	key, err := generateKey(o.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl, err := template(o)
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	kp, err := sign(tmpl, tmpl, key, key)
	if err != nil {
		return nil, err
	}
	return &CA{*kp}, nil
}

// IssueServer issues a serving certificate (also usable as a client, as etcd
// peers and proxies need).
func (ca *CA) IssueServer(o Options) (*KeyPair, error) {
	return ca.issue(o, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
}

// IssueClient issues a client certificate.
func (ca *CA) IssueClient(o Options) (*KeyPair, error) {
	return ca.issue(o, x509.ExtKeyUsageClientAuth)
}

func (ca *CA) issue(o Options, usage ...x509.ExtKeyUsage) (*KeyPair, error) {
	if o.CommonName == "" {
		return nil, errors.New("issue certificate: empty common name")
	}
	key, err := generateKey(o.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generate key for %q: %w", o.CommonName, err)
	}
	tmpl, err := template(o)
	if err != nil {
		return nil, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	if _, isRSA := key.(*rsa.PrivateKey); isRSA {
		// RSA key exchange (TLS 1.2 without ECDHE) encrypts to the key.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	tmpl.ExtKeyUsage = usage
	tmpl.AuthorityKeyId = ca.Cert.SubjectKeyId
	return sign(tmpl, ca.Cert, key, ca.Key)
}

func template(o Options) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	if o.Validity == 0 {
		o.Validity = DefaultLeafValidity
	}
	if o.Validity < 0 {
		return nil, fmt.Errorf("certificate %q: negative validity %s", o.CommonName, o.Validity)
	}
	notBefore := o.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Minute)
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: o.CommonName, Organization: o.Organization},
		DNSNames:     o.DNSNames,
		IPAddresses:  o.IPAddresses,
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(o.Validity),
	}, nil
}

func sign(tmpl, parent *x509.Certificate, key, signer crypto.Signer) (*KeyPair, error) {
	pub := key.Public()
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	tmpl.SubjectKeyId = ski
	if parent == tmpl {
		parent.SubjectKeyId = ski
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key %q: %w", tmpl.Subject.CommonName, err)
	}
	return &KeyPair{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	// A truncated hash is enough to tell keys apart (RFC 7093 method 1 style).
	sum := sha1Sum(der)
	return sum[:], nil
}

// WriteFiles writes the certificate (0644) and key (0600). It refuses to
// overwrite an existing file unless force is set.
func (kp *KeyPair) WriteFiles(certFile, keyFile string, force bool) error {
	if err := writeFile(certFile, kp.CertPEM, 0o644, force); err != nil {
		return err
	}
	return writeFile(keyFile, kp.KeyPEM, 0o600, force)
}

// ErrExists is returned when a file would be overwritten without force.
var ErrExists = errors.New("file exists (use --force to overwrite)")

func writeFile(path string, data []byte, mode os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if !force {
		flags |= os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("write %s: %w", path, ErrExists)
		}
		return fmt.Errorf("write %s: %w", path, unwrapPath(err))
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// LoadKeyPair reads a PEM certificate and key from files.
func LoadKeyPair(certFile, keyFile string) (*KeyPair, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read certificate %s: %w", certFile, unwrapPath(err))
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", keyFile, unwrapPath(err))
	}
	return ParseKeyPair(certPEM, keyPEM, certFile, keyFile)
}

// ParseKeyPair parses PEM data; the names are used in errors only.
func ParseKeyPair(certPEM, keyPEM []byte, certName, keyName string) (*KeyPair, error) {
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", certName, err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("key %s: no PEM block", keyName)
	}
	var key any
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", keyName, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key %s: %T is not a signing key", keyName, key)
	}
	return &KeyPair{Cert: cert, Key: signer, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// LoadCA reads a CA certificate and key.
func LoadCA(certFile, keyFile string) (*CA, error) {
	kp, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if !kp.Cert.IsCA {
		return nil, fmt.Errorf("certificate %s: not a CA", certFile)
	}
	return &CA{*kp}, nil
}

// ParseCertificatePEM parses the first certificate in PEM data.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// unwrapPath drops the *os.PathError around err: the caller's message names
// the path already. errors.Is still matches the cause (fs.ErrPermission...).
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
