//go:build tools

// Package tools pins the CoreDNS release that ../build.sh builds. It is its
// own module because CoreDNS requires other k8s.io library versions than
// k8s.io/kubernetes does.
package tools

import (
	_ "github.com/coredns/coredns"
)
