package main

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/pkg/meshapi"
)

// defaultServerDNSNames are the in-cluster names of the proxy Service; the
// operator adds the address peers dial with --ip/--dns.
var defaultServerDNSNames = []string{
	"clustermesh-apiserver",
	"clustermesh-apiserver." + defaultNamespace,
	"clustermesh-apiserver." + defaultNamespace + ".svc",
	certs.CacheServiceName + "." + defaultNamespace + ".svc",
}

// renewWarning is how close to expiry connect and verify start warning.
const renewWarning = 30 * 24 * time.Hour

func (c *cli) cmdInit(args []string) error {
	fs := c.newFlagSet("init", "init --dir DIR --cluster NAME [--validity 3650d] [--key-type ecdsa-p256] [--force]")
	dir := fs.String("dir", "", "cluster directory (required)")
	cluster := fs.String("cluster", "", "cluster name (required)")
	validity := certs.DefaultCAValidity
	fs.Var(durationFlag{&validity}, "validity", "CA validity")
	keyType := certs.KeyECDSAP256
	fs.Var(keyTypeFlag{&keyType}, "key-type", "key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096")
	force := fs.Bool("force", false, "replace an existing CA (every certificate it signed stops working)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *cluster == "" {
		return usagef("init: --dir and --cluster are required")
	}
	if err := meshapi.ValidateClusterName(*cluster); err != nil {
		return usageError{fmt.Errorf("init: %w", err)}
	}
	l := layout{*dir}
	if err := refuseExisting(*force, l.caCert(), l.caKey()); err != nil {
		return err
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", l.dir, bare(err))
	}
	ca, err := certs.NewCA(certs.Options{
		CommonName:   caCNPrefix + *cluster,
		Organization: []string{"podmesh"},
		NotBefore:    c.now().Add(-time.Minute),
		Validity:     validity,
		KeyType:      keyType,
	})
	if err != nil {
		return err
	}
	if err := ca.WriteFiles(l.caCert(), l.caKey(), *force); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote CA of cluster %s: %s, %s (valid until %s)\n", *cluster, l.caCert(), l.caKey(), formatTime(ca.Cert.NotAfter))
	return nil
}

func (c *cli) cmdServer(args []string) error {
	fs := c.newFlagSet("server", "server --dir DIR [--ip IP]... [--dns NAME]... [--validity 365d] [--key-type ecdsa-p256] [--force]")
	dir := fs.String("dir", "", "cluster directory holding ca.crt and ca.key (required)")
	var dnsNames, ips []string
	fs.Var(listFlag{&dnsNames}, "dns", "DNS name peers dial (repeatable or comma-separated); the in-cluster Service names are always included")
	fs.Var(listFlag{&ips}, "ip", "IP address peers dial, e.g. a node IP for the NodePort (repeatable or comma-separated)")
	validity, keyType := leafFlags(fs)
	force := fs.Bool("force", false, "replace an existing server certificate")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usagef("server: --dir is required")
	}
	l := layout{*dir}
	if err := refuseExisting(*force, l.serverCert(), l.serverKey()); err != nil {
		return err
	}
	ca, err := l.loadCA(c.now())
	if err != nil {
		return err
	}
	var ipAddrs []net.IP
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return usagef("server: --ip %q is not an IP address", s)
		}
		ipAddrs = append(ipAddrs, ip)
	}
	if len(dnsNames) == 0 && len(ipAddrs) == 0 {
		fmt.Fprintf(c.stderr, "warning: no --ip or --dns given; only in-cluster names are in the certificate, and connect --address must be one of them\n")
	}
	opts := certs.Options{
		CommonName:   "clustermesh-apiserver." + ca.cluster,
		Organization: []string{"podmesh"},
		DNSNames:     dedupe(append(slices.Clone(defaultServerDNSNames), dnsNames...)),
		IPAddresses:  ipAddrs,
		NotBefore:    c.now().Add(-time.Minute),
		Validity:     *validity,
		KeyType:      *keyType,
	}
	if err := checkWithinCA(ca, l.caCert(), opts); err != nil {
		return err
	}
	kp, err := ca.ca.IssueServer(opts)
	if err != nil {
		return err
	}
	if err := kp.WriteFiles(l.serverCert(), l.serverKey(), *force); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote server certificate of cluster %s: %s, %s (SANs %s; valid until %s)\n",
		ca.cluster, l.serverCert(), l.serverKey(), strings.Join(sans(kp.Cert), ", "), formatTime(kp.Cert.NotAfter))
	return nil
}

func (c *cli) cmdPeer(args []string) error {
	fs := c.newFlagSet("peer", "peer --dir DIR --peer NAME [--validity 365d] [--key-type ecdsa-p256] [--force]")
	dir := fs.String("dir", "", "directory of the SERVING cluster, holding its ca.crt and ca.key (required)")
	peer := fs.String("peer", "", "name of the cluster whose agents will read this cluster (required)")
	validity, keyType := leafFlags(fs)
	force := fs.Bool("force", false, "replace an existing peer certificate")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *peer == "" {
		return usagef("peer: --dir and --peer are required")
	}
	if err := meshapi.ValidateClusterName(*peer); err != nil {
		return usageError{fmt.Errorf("peer: %w", err)}
	}
	l := layout{*dir}
	if err := refuseExisting(*force, l.peerCert(*peer), l.peerKey(*peer)); err != nil {
		return err
	}
	ca, err := l.loadCA(c.now())
	if err != nil {
		return err
	}
	if ca.cluster == *peer {
		return usagef("peer: --peer %s is the cluster of CA %s itself", *peer, l.caCert())
	}
	opts := certs.Options{
		CommonName:   certs.PeerCN(*peer),
		Organization: []string{"podmesh"},
		NotBefore:    c.now().Add(-time.Minute),
		Validity:     *validity,
		KeyType:      *keyType,
	}
	if err := checkWithinCA(ca, l.caCert(), opts); err != nil {
		return err
	}
	if err := os.MkdirAll(l.peersDir(), 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", l.peersDir(), bare(err))
	}
	kp, err := ca.ca.IssueClient(opts)
	if err != nil {
		return err
	}
	if err := kp.WriteFiles(l.peerCert(*peer), l.peerKey(*peer), *force); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote client certificate %s for cluster %s to read cluster %s: %s, %s (valid until %s)\n",
		kp.Cert.Subject.CommonName, *peer, ca.cluster, l.peerCert(*peer), l.peerKey(*peer), formatTime(kp.Cert.NotAfter))
	return nil
}

// leafFlags defines --validity and --key-type of a command that issues a
// leaf certificate.
func leafFlags(fs *flag.FlagSet) (*time.Duration, *certs.KeyType) {
	validity := certs.DefaultLeafValidity
	fs.Var(durationFlag{&validity}, "validity", "certificate validity")
	keyType := certs.KeyECDSAP256
	fs.Var(keyTypeFlag{&keyType}, "key-type", "key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096")
	return &validity, &keyType
}

// emitSecret writes a Secret manifest to out (0600), or to stdout when out
// is "-", which it reports.
func (c *cli) emitSecret(secret *secretManifest, out string) (toStdout bool, err error) {
	body, err := secret.marshal()
	if err != nil {
		return false, err
	}
	if out == "-" {
		if _, err := c.stdout.Write(body); err != nil {
			return true, fmt.Errorf("write secret manifest to stdout: %w", err)
		}
		return true, nil
	}
	return false, writeAtomic(out, body, 0o600)
}

// cmdCacheSecret issues the local agents' client certificate (CN
// local-<cluster>, from the cluster's own CA) and renders the podmesh-cache
// Secret the agents mount to read their own cluster's cache.
func (c *cli) cmdCacheSecret(args []string) error {
	fs := c.newFlagSet("cache-secret", "cache-secret --dir DIR [--endpoint URL]... [--out FILE|-] [--validity 365d] [--force]")
	dir := fs.String("dir", "", "cluster directory holding ca.crt and ca.key (required)")
	var endpoints []string
	fs.Var(listFlag{&endpoints}, "endpoint", "URL the agents dial (repeatable; default the in-cluster cache Service)")
	out := fs.String("out", "-", "where to write the Secret manifest; - for stdout")
	namespace := fs.String("namespace", defaultNamespace, "namespace of the Secret")
	validity, keyType := leafFlags(fs)
	force := fs.Bool("force", false, "overwrite --out")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usagef("cache-secret: --dir is required")
	}
	if *out != "-" {
		if err := refuseExisting(*force, *out); err != nil {
			return err
		}
	}
	if len(endpoints) == 0 {
		endpoints = []string{certs.CacheEndpoint(*namespace)}
	}
	l := layout{*dir}
	ca, err := l.loadCA(c.now())
	if err != nil {
		return err
	}
	opts := certs.Options{
		CommonName:   certs.LocalCN(ca.cluster),
		Organization: []string{"podmesh"},
		NotBefore:    c.now().Add(-time.Minute),
		Validity:     *validity,
		KeyType:      *keyType,
	}
	if err := checkWithinCA(ca, l.caCert(), opts); err != nil {
		return err
	}
	kp, err := ca.ca.IssueClient(opts)
	if err != nil {
		return err
	}
	caPEM, err := readFile("CA certificate", l.caCert())
	if err != nil {
		return err
	}
	files, err := certs.CacheSecretFiles(endpoints, caPEM, kp.CertPEM, kp.KeyPEM)
	if err != nil {
		return err
	}
	secret := newSecret(certs.CacheSecretName, *namespace, "Opaque")
	secret.Data = files
	if toStdout, err := c.emitSecret(secret, *out); err != nil || toStdout {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote Secret %s/%s (client certificate %s, valid until %s) for cluster %s's agents to %s\n",
		*namespace, certs.CacheSecretName, kp.Cert.Subject.CommonName, formatTime(kp.Cert.NotAfter), ca.cluster, *out)
	return nil
}

func (c *cli) cmdConnect(args []string) error {
	fs := c.newFlagSet("connect", "connect --dir DIR --peer NAME --address HOST [--port 32379] [--out FILE|-] [--merge] [--force]")
	dir := fs.String("dir", "", "directory of the SERVING cluster (ca.crt, server.crt, peers/<peer>.*) (required)")
	peer := fs.String("peer", "", "cluster whose agents will mount the Secret (required)")
	var addresses []string
	fs.Var(listFlag{&addresses}, "address", "address (IP or DNS name) of the serving cluster's proxy as the peer dials it; must be in server.crt (repeatable)")
	port := fs.Int("port", defaultProxyPort, "proxy port (the Service's NodePort by default)")
	out := fs.String("out", "-", "where to write the Secret manifest; - for stdout")
	namespace := fs.String("namespace", defaultNamespace, "namespace of the Secret")
	name := fs.String("secret-name", defaultMeshSecret, "name of the Secret the agents mount")
	merge := fs.Bool("merge", false, "add this cluster's keys to the Secret already in --out (one Secret holds every remote cluster)")
	force := fs.Bool("force", false, "overwrite --out, or replace this cluster's keys in it with --merge")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *peer == "" || len(addresses) == 0 {
		return usagef("connect: --dir, --peer and --address are required")
	}
	if err := meshapi.ValidateClusterName(*peer); err != nil {
		return usageError{fmt.Errorf("connect: %w", err)}
	}
	if *port < 1 || *port > 65535 {
		return usagef("connect: --port %d out of range", *port)
	}
	if *merge && *out == "-" {
		return usagef("connect: --merge needs --out FILE")
	}
	now := c.now()
	l := layout{*dir}

	// Refuse before doing anything if the output exists and may not change.
	var existing *secretManifest
	switch {
	case *out == "-":
	case *merge:
		var err error
		if existing, err = readSecretFile(*out); err != nil {
			return err
		}
	default:
		if err := refuseExisting(*force, *out); err != nil {
			return err
		}
	}

	ca, err := l.loadCACert(now)
	if err != nil {
		return err
	}
	if ca.cluster == *peer {
		return usagef("connect: --peer %s is the serving cluster itself (CA %s)", *peer, l.caCert())
	}
	caPEM, err := readFile("CA certificate", l.caCert())
	if err != nil {
		return err
	}

	server, err := loadCert("server certificate", l.serverCert())
	if err != nil {
		return err
	}
	if err := verifyLeaf(ca, l.caCert(), l.serverCert(), server, now, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	var endpoints []string
	for _, a := range addresses {
		if err := server.VerifyHostname(a); err != nil {
			return fmt.Errorf("certificate %s is not valid for --address %s (SANs: %s); reissue it with podmesh-certs server --force --ip/--dns", l.serverCert(), a, strings.Join(sans(server), ", "))
		}
		endpoints = append(endpoints, proxyEndpoint(a, *port))
	}

	peerKP, err := loadPair("peer", l.peerCert(*peer), l.peerKey(*peer))
	if err != nil {
		return err
	}
	if err := verifyLeaf(ca, l.caCert(), l.peerCert(*peer), peerKP.Cert, now, x509.ExtKeyUsageClientAuth); err != nil {
		return err
	}
	if cn := peerKP.Cert.Subject.CommonName; cn != certs.PeerCN(*peer) {
		return fmt.Errorf("certificate %s has CN %q, want %q", l.peerCert(*peer), cn, certs.PeerCN(*peer))
	}
	for _, w := range []struct {
		path string
		cert *x509.Certificate
	}{{l.caCert(), ca.cert}, {l.serverCert(), server}, {l.peerCert(*peer), peerKP.Cert}} {
		if left := w.cert.NotAfter.Sub(now); left < renewWarning {
			fmt.Fprintf(c.stderr, "warning: certificate %s expires at %s; rotate it soon\n", w.path, formatTime(w.cert.NotAfter))
		}
	}

	files, err := meshSecretFiles(ca.cluster, endpoints, caPEM, peerKP.CertPEM, peerKP.KeyPEM)
	if err != nil {
		return err
	}
	secret := newSecret(*name, *namespace, "Opaque")
	if existing != nil {
		if existing.Metadata.Name != *name || existing.Metadata.Namespace != *namespace {
			return fmt.Errorf("secret manifest %s: is %s/%s, not %s/%s", *out, existing.Metadata.Namespace, existing.Metadata.Name, *namespace, *name)
		}
		if !*force {
			for _, k := range meshSecretKeys(ca.cluster) {
				if _, ok := existing.Data[k]; ok {
					return fmt.Errorf("secret manifest %s already holds key %q of cluster %s (use --force to replace it)", *out, k, ca.cluster)
				}
			}
		}
		secret = existing
	}
	for k, v := range files {
		secret.Data[k] = v
	}
	body, err := secret.marshal()
	if err != nil {
		return err
	}
	if *out == "-" {
		if _, err := c.stdout.Write(body); err != nil {
			return fmt.Errorf("write secret manifest to stdout: %w", err)
		}
	} else if err := writeAtomic(*out, body, 0o600); err != nil {
		return err
	}

	cns, err := l.addAllowedPeer(certs.PeerCN(*peer))
	if err != nil {
		return err
	}
	dest := *out
	if dest == "-" {
		dest = "stdout"
	}
	fmt.Fprintf(c.stderr, "wrote Secret %s/%s to %s: cluster %s's agents read cluster %s at %s\n",
		*namespace, *name, dest, *peer, ca.cluster, strings.Join(endpoints, ", "))
	fmt.Fprintf(c.stderr, "cluster %s's clustermesh-apiserver must allow the peer: --allowed-peers %s (recorded in %s)\n",
		ca.cluster, strings.Join(cns, ","), l.allowedPeers())
	return nil
}

func (c *cli) cmdAllowedPeers(args []string) error {
	fs := c.newFlagSet("allowed-peers", "allowed-peers --dir DIR")
	dir := fs.String("dir", "", "cluster directory (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usagef("allowed-peers: --dir is required")
	}
	cns, err := layout{*dir}.readAllowedPeers()
	if err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, strings.Join(cns, ","))
	return nil
}

func (c *cli) cmdServerSecret(args []string) error {
	fs := c.newFlagSet("server-secret", "server-secret --dir DIR [--out FILE|-] [--force]")
	dir := fs.String("dir", "", "cluster directory holding ca.crt, server.crt and server.key (required)")
	out := fs.String("out", "-", "where to write the Secret manifest; - for stdout")
	namespace := fs.String("namespace", defaultNamespace, "namespace of the Secret")
	name := fs.String("secret-name", defaultServerTLSSecret, "name of the Secret the clustermesh-apiserver mounts")
	force := fs.Bool("force", false, "overwrite --out")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usagef("server-secret: --dir is required")
	}
	if *out != "-" {
		if err := refuseExisting(*force, *out); err != nil {
			return err
		}
	}
	now := c.now()
	l := layout{*dir}
	ca, err := l.loadCACert(now)
	if err != nil {
		return err
	}
	caPEM, err := readFile("CA certificate", l.caCert())
	if err != nil {
		return err
	}
	kp, err := loadPair("server", l.serverCert(), l.serverKey())
	if err != nil {
		return err
	}
	if err := verifyLeaf(ca, l.caCert(), l.serverCert(), kp.Cert, now, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	secret := newSecret(*name, *namespace, "kubernetes.io/tls")
	secret.Data["tls.crt"] = kp.CertPEM
	secret.Data["tls.key"] = kp.KeyPEM
	secret.Data["ca.crt"] = caPEM
	if toStdout, err := c.emitSecret(secret, *out); err != nil || toStdout {
		return err
	}
	fmt.Fprintf(c.stderr, "wrote Secret %s/%s for cluster %s's clustermesh-apiserver to %s\n", *namespace, *name, ca.cluster, *out)
	return nil
}

func (c *cli) cmdRotate(args []string) error {
	fs := c.newFlagSet("rotate", "rotate --dir DIR (--server | --peer NAME... | --all) [--before 30d | --force] [--validity D]")
	dir := fs.String("dir", "", "cluster directory (required)")
	server := fs.Bool("server", false, "rotate server.crt")
	var peers []string
	fs.Var(listFlag{&peers}, "peer", "rotate peers/<NAME>.crt (repeatable)")
	all := fs.Bool("all", false, "rotate server.crt and every peer certificate")
	before := 30 * 24 * time.Hour
	fs.Var(durationFlag{&before}, "before", "rotate a certificate that expires within this time")
	force := fs.Bool("force", false, "rotate regardless of the remaining validity")
	var validity time.Duration
	fs.Var(durationFlag{&validity}, "validity", "validity of the new certificate (default: that of the old one)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || (!*server && len(peers) == 0 && !*all) {
		return usagef("rotate: --dir and one of --server, --peer, --all are required")
	}
	now := c.now()
	l := layout{*dir}
	ca, err := l.loadCA(now)
	if err != nil {
		return err
	}
	type target struct{ what, cert, key string }
	var targets []target
	if *server || *all {
		targets = append(targets, target{"server", l.serverCert(), l.serverKey()})
	}
	if *all {
		found, err := listPeers(l)
		if err != nil {
			return err
		}
		peers = dedupe(append(peers, found...))
	}
	for _, p := range peers {
		if err := meshapi.ValidateClusterName(p); err != nil {
			return usageError{fmt.Errorf("rotate: %w", err)}
		}
		targets = append(targets, target{"peer", l.peerCert(p), l.peerKey(p)})
	}
	var errs []error
	for _, t := range targets {
		if err := c.rotateOne(ca, l, t.what, t.cert, t.key, now, before, validity, *force); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *cli) rotateOne(ca *clusterCA, l layout, what, certPath, keyPath string, now time.Time, before, validity time.Duration, force bool) error {
	old, err := loadPair(what, certPath, keyPath)
	if err != nil {
		return err
	}
	usage := x509.ExtKeyUsageClientAuth
	if what == "server" {
		usage = x509.ExtKeyUsageServerAuth
	}
	// An expired certificate is what rotate is for; a foreign one is not.
	if err := certs.VerifyIssued(ca.cert, old.Cert, old.Cert.NotBefore, usage); err != nil {
		return fmt.Errorf("certificate %s cannot be rotated with CA %s: %w", certPath, l.caCert(), err)
	}
	left := old.Cert.NotAfter.Sub(now)
	if !force && left > before {
		fmt.Fprintf(c.stderr, "%s: valid until %s, more than %s left; not rotated (use --force)\n",
			certPath, formatTime(old.Cert.NotAfter), durationFlag{&before})
		return nil
	}
	if validity == 0 {
		validity = old.Cert.NotAfter.Sub(old.Cert.NotBefore)
	}
	kt, err := certs.KeyTypeOf(old.Key)
	if err != nil {
		return fmt.Errorf("key %s: %w", keyPath, err)
	}
	opts := certs.Options{
		CommonName:   old.Cert.Subject.CommonName,
		Organization: old.Cert.Subject.Organization,
		DNSNames:     old.Cert.DNSNames,
		IPAddresses:  old.Cert.IPAddresses,
		NotBefore:    now.Add(-time.Minute),
		Validity:     validity,
		KeyType:      kt,
	}
	if err := checkWithinCA(ca, l.caCert(), opts); err != nil {
		return err
	}
	var kp *certs.KeyPair
	if what == "server" {
		kp, err = ca.ca.IssueServer(opts)
	} else {
		kp, err = ca.ca.IssueClient(opts)
	}
	if err != nil {
		return err
	}
	// Key first: a crash between the renames leaves a key that does not match
	// the old certificate, which every later command reports by name.
	if err := writeAtomic(keyPath, kp.KeyPEM, 0o600); err != nil {
		return err
	}
	if err := writeAtomic(certPath, kp.CertPEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "%s: rotated, valid until %s (was %s)\n", certPath, formatTime(kp.Cert.NotAfter), formatTime(old.Cert.NotAfter))
	return nil
}

func (c *cli) cmdVerify(args []string) error {
	fs := c.newFlagSet("verify", "verify (--dir DIR | --config FILE)")
	dir := fs.String("dir", "", "cluster directory: check the CA, server.crt and every peer certificate")
	config := fs.String("config", "", "an etcd-client config file (e.g. /var/lib/podmesh/clustermesh/<cluster>): check the files it names")
	if err := parse(fs, args); err != nil {
		return err
	}
	if (*dir == "") == (*config == "") {
		return usagef("verify: give exactly one of --dir and --config")
	}
	now := c.now()
	if *config != "" {
		return c.verifyConfig(*config, now)
	}
	return c.verifyDir(layout{*dir}, now)
}

func (c *cli) verifyDir(l layout, now time.Time) error {
	ca, err := l.loadCA(now)
	if err != nil {
		return err
	}
	c.reportOK(l.caCert(), ca.cert, now)
	var errs []error
	check := func(what, certPath, keyPath string, usage x509.ExtKeyUsage, wantCN string) {
		kp, err := loadPair(what, certPath, keyPath)
		if err != nil {
			errs = append(errs, err)
			return
		}
		if err := verifyLeaf(ca, l.caCert(), certPath, kp.Cert, now, usage); err != nil {
			errs = append(errs, err)
			return
		}
		if wantCN != "" && kp.Cert.Subject.CommonName != wantCN {
			errs = append(errs, fmt.Errorf("certificate %s has CN %q, want %q", certPath, kp.Cert.Subject.CommonName, wantCN))
			return
		}
		c.reportOK(certPath, kp.Cert, now)
	}
	if _, err := os.Stat(l.serverCert()); err == nil {
		check("server", l.serverCert(), l.serverKey(), x509.ExtKeyUsageServerAuth, "")
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("check %s: %w", l.serverCert(), bare(err)))
	}
	peers, err := listPeers(l)
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range peers {
		check("peer", l.peerCert(p), l.peerKey(p), x509.ExtKeyUsageClientAuth, certs.PeerCN(p))
	}
	return errors.Join(errs...)
}

// verifyConfig checks an etcd-client config as the agent will use it: the
// client certificate must be valid now and signed by the trusted CA (the
// serving cluster signs both its server and its peers' certificates).
func (c *cli) verifyConfig(path string, now time.Time) error {
	data, err := readFile("etcd config", path)
	if err != nil {
		return err
	}
	var cfg etcdClientConfig
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("etcd config %s: %w", path, err)
	}
	if len(cfg.Endpoints) == 0 || cfg.TrustedCAFile == "" || cfg.CertFile == "" || cfg.KeyFile == "" {
		return fmt.Errorf("etcd config %s: endpoints, trusted-ca-file, cert-file and key-file are all required", path)
	}
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(path), p)
	}
	caPath, certPath, keyPath := resolve(cfg.TrustedCAFile), resolve(cfg.CertFile), resolve(cfg.KeyFile)
	caCert, err := loadCert("trusted CA", caPath)
	if err != nil {
		return fmt.Errorf("etcd config %s: %w", path, err)
	}
	if err := certs.CheckValidity(caCert, now); err != nil {
		return fmt.Errorf("etcd config %s: CA %s %w", path, caPath, err)
	}
	kp, err := loadPair("client", certPath, keyPath)
	if err != nil {
		return fmt.Errorf("etcd config %s: %w", path, err)
	}
	ca := &clusterCA{cert: caCert}
	if err := verifyLeaf(ca, caPath, certPath, kp.Cert, now, x509.ExtKeyUsageClientAuth); err != nil {
		return fmt.Errorf("etcd config %s: %w", path, err)
	}
	if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(c.stderr, "warning: key %s is readable by group or others (mode %#o)\n", keyPath, fi.Mode().Perm())
	}
	c.reportOK(caPath, caCert, now)
	c.reportOK(certPath, kp.Cert, now)
	fmt.Fprintf(c.stdout, "%s: endpoints %s\n", path, strings.Join(cfg.Endpoints, ", "))
	return nil
}

func (c *cli) reportOK(path string, cert *x509.Certificate, now time.Time) {
	note := ""
	if cert.NotAfter.Sub(now) < renewWarning {
		note = " (rotate soon)"
	}
	fmt.Fprintf(c.stdout, "%s: ok, CN %s, valid until %s%s\n", path, cert.Subject.CommonName, formatTime(cert.NotAfter), note)
}

// listPeers returns the peers with a certificate in peers/.
func listPeers(l layout) ([]string, error) {
	entries, err := os.ReadDir(l.peersDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", l.peersDir(), bare(err))
	}
	var peers []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".crt"); ok && !e.IsDir() {
			peers = append(peers, name)
		}
	}
	sort.Strings(peers)
	return peers, nil
}

// checkWithinCA refuses a leaf that would outlive its CA: peers would reject
// it the day the CA expires, long before the leaf says so.
func checkWithinCA(ca *clusterCA, caPath string, o certs.Options) error {
	if end := o.NotBefore.Add(o.Validity); end.After(ca.cert.NotAfter) {
		return fmt.Errorf("certificate %q would be valid until %s, after CA %s expires at %s; use a shorter --validity",
			o.CommonName, formatTime(end), caPath, formatTime(ca.cert.NotAfter))
	}
	return nil
}

func sans(cert *x509.Certificate) []string {
	out := slices.Clone(cert.DNSNames)
	for _, ip := range cert.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
