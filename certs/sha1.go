package certs

import "crypto/sha1" //nolint:gosec // key identifiers, not a security function

func sha1Sum(b []byte) [20]byte { return sha1.Sum(b) }
