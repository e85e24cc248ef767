package certs

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Sentinel errors of Verify; callers wrap them with the file names involved.
var (
	ErrExpired       = errors.New("expired")
	ErrNotYetValid   = errors.New("not yet valid")
	ErrNotSignedByCA = errors.New("not signed by the CA")
	ErrWrongUsage    = errors.New("wrong key usage")
	ErrKeyMismatch   = errors.New("key does not match certificate")
)

// CheckValidity reports whether now lies inside the validity window of cert.
// The errors wrap ErrExpired or ErrNotYetValid and carry the boundary time.
func CheckValidity(cert *x509.Certificate, now time.Time) error {
	if now.Before(cert.NotBefore) {
		return fmt.Errorf("%w: valid from %s", ErrNotYetValid, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(cert.NotAfter) {
		return fmt.Errorf("%w at %s", ErrExpired, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// VerifyIssued checks that cert was signed by ca, is valid at now, and (when
// usage is given) carries that extended key usage. It checks in that order so
// the error names the first thing a human has to fix.
func VerifyIssued(ca, cert *x509.Certificate, now time.Time, usage x509.ExtKeyUsage) error {
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("%w (issuer %q, CA subject %q): %w", ErrNotSignedByCA, cert.Issuer.CommonName, ca.Subject.CommonName, err)
	}
	if !bytes.Equal(cert.RawIssuer, ca.RawSubject) {
		return fmt.Errorf("%w (issuer %q, CA subject %q)", ErrNotSignedByCA, cert.Issuer.CommonName, ca.Subject.CommonName)
	}
	if err := CheckValidity(cert, now); err != nil {
		return err
	}
	if usage != x509.ExtKeyUsageAny && !slices.Contains(cert.ExtKeyUsage, usage) && !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return fmt.Errorf("%w: lacks %s", ErrWrongUsage, usageName(usage))
	}
	return nil
}

// KeyMatches reports whether key is the private key of cert.
func KeyMatches(cert *x509.Certificate, key crypto.Signer) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return ErrKeyMismatch
	}
	return nil
}

func usageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageServerAuth:
		return "server authentication"
	case x509.ExtKeyUsageClientAuth:
		return "client authentication"
	}
	return fmt.Sprintf("extended key usage %d", u)
}
