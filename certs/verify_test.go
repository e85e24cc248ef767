package certs

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestKeyTypesIssueUsableKeyPairs(t *testing.T) {
	for _, kt := range KeyTypes() {
		t.Run(string(kt), func(t *testing.T) {
			// The CA's key type is covered by NewCA itself; the leaf carries kt.
			ca, err := NewCA(Options{CommonName: "podmesh-ca-east", KeyType: KeyECDSAP384})
			require.NoError(t, err)
			srv, err := ca.IssueServer(Options{CommonName: "server", KeyType: kt})
			require.NoError(t, err)

			parsed, err := ParseKeyPair(srv.CertPEM, srv.KeyPEM, "server.crt", "server.key")
			require.NoError(t, err)
			got, err := KeyTypeOf(parsed.Key)
			require.NoError(t, err)
			require.Equal(t, kt, got)
			require.NoError(t, KeyMatches(parsed.Cert, parsed.Key))
			require.NoError(t, VerifyIssued(ca.Cert, parsed.Cert, time.Now(), x509.ExtKeyUsageServerAuth))
		})
	}
}

func TestParseKeyType(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want KeyType
		ok   bool
	}{
		{"ecdsa-p256", KeyECDSAP256, true},
		{"ECDSA-P384", KeyECDSAP384, true},
		{"rsa-3072", KeyRSA3072, true},
		{"rsa-1024", "", false},
		{"", "", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseKeyType(tc.in)
			if !tc.ok {
				require.ErrorContains(t, err, "unknown key type")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestVerifyIssued(t *testing.T) {
	now := time.Now()
	ca, err := NewCA(Options{CommonName: "podmesh-ca-east"})
	require.NoError(t, err)
	other, err := NewCA(Options{CommonName: "podmesh-ca-west"})
	require.NoError(t, err)
	mustClient := func(ca *CA, o Options) *x509.Certificate {
		kp, err := ca.IssueClient(o)
		require.NoError(t, err)
		return kp.Cert
	}
	mustServer := func(ca *CA, o Options) *x509.Certificate {
		kp, err := ca.IssueServer(o)
		require.NoError(t, err)
		return kp.Cert
	}
	for _, tc := range []struct {
		name    string
		cert    *x509.Certificate
		usage   x509.ExtKeyUsage
		wantErr error
		wantMsg string
	}{
		{"valid client", mustClient(ca, Options{CommonName: "remote-west"}), x509.ExtKeyUsageClientAuth, nil, ""},
		{"valid server as client", mustServer(ca, Options{CommonName: "srv"}), x509.ExtKeyUsageClientAuth, nil, ""},
		{"expired", mustClient(ca, Options{CommonName: "remote-west", NotBefore: now.Add(-48 * time.Hour), Validity: 24 * time.Hour}),
			x509.ExtKeyUsageClientAuth, ErrExpired, "expired at " + now.Add(-24*time.Hour).UTC().Format("2006-01-02")},
		{"not yet valid", mustClient(ca, Options{CommonName: "remote-west", NotBefore: now.Add(24 * time.Hour)}),
			x509.ExtKeyUsageClientAuth, ErrNotYetValid, "valid from " + now.Add(24*time.Hour).UTC().Format("2006-01-02")},
		{"other CA", mustClient(other, Options{CommonName: "remote-west"}), x509.ExtKeyUsageClientAuth, ErrNotSignedByCA, "podmesh-ca-west"},
		{"client used as server", mustClient(ca, Options{CommonName: "remote-west"}), x509.ExtKeyUsageServerAuth, ErrWrongUsage, "server authentication"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyIssued(ca.Cert, tc.cert, now, tc.usage)
			if tc.wantErr == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			require.ErrorContains(t, err, tc.wantMsg)
		})
	}
}

func TestKeyMatchesRejectsOtherKey(t *testing.T) {
	ca, err := NewCA(Options{CommonName: "podmesh-ca-east"})
	require.NoError(t, err)
	a, err := ca.IssueClient(Options{CommonName: "a"})
	require.NoError(t, err)
	b, err := ca.IssueClient(Options{CommonName: "b"})
	require.NoError(t, err)
	require.NoError(t, KeyMatches(a.Cert, a.Key))
	require.ErrorIs(t, KeyMatches(a.Cert, b.Key), ErrKeyMismatch)
}
