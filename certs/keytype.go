package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"strings"
)

// KeyType names a private key algorithm and size.
type KeyType string

// The key types podmesh issues. ECDSA P-256 is the default: small, fast, and
// accepted by every TLS stack etcd and Go use.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyECDSAP384 KeyType = "ecdsa-p384"
	KeyRSA2048   KeyType = "rsa-2048"
	KeyRSA3072   KeyType = "rsa-3072"
	KeyRSA4096   KeyType = "rsa-4096"
)

// KeyTypes lists the supported key types, default first.
func KeyTypes() []KeyType {
	return []KeyType{KeyECDSAP256, KeyECDSAP384, KeyRSA2048, KeyRSA3072, KeyRSA4096}
}

// ParseKeyType parses a key type name such as "ecdsa-p384".
func ParseKeyType(s string) (KeyType, error) {
	for _, kt := range KeyTypes() {
		if strings.EqualFold(s, string(kt)) {
			return kt, nil
		}
	}
	names := make([]string, 0, len(KeyTypes()))
	for _, kt := range KeyTypes() {
		names = append(names, string(kt))
	}
	return "", fmt.Errorf("unknown key type %q (one of %s)", s, strings.Join(names, ", "))
}

// KeyTypeOf reports the KeyType of an existing key, so a rotation can keep it.
func KeyTypeOf(key crypto.Signer) (KeyType, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return KeyECDSAP256, nil
		case elliptic.P384():
			return KeyECDSAP384, nil
		}
		return "", fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
	case *rsa.PrivateKey:
		switch k.N.BitLen() {
		case 2048:
			return KeyRSA2048, nil
		case 3072:
			return KeyRSA3072, nil
		case 4096:
			return KeyRSA4096, nil
		}
		return "", fmt.Errorf("unsupported RSA key size %d", k.N.BitLen())
	}
	return "", fmt.Errorf("unsupported key %T", key)
}

func generateKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case "", KeyECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KeyRSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case KeyRSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case KeyRSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("unknown key type %q", kt)
}
