package certs

import (
	"fmt"
	"net"
	"net/url"
	"strconv"

	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/pkg/kvstore"
)

// ProxyEndpoint is the https URL of a proxy address; IPv6 gets brackets.
func ProxyEndpoint(address string, port int) string {
	u := url.URL{Scheme: "https", Host: net.JoinHostPort(address, strconv.Itoa(port))}
	return u.String()
}

// MeshSecretKeys are the Secret keys that connect a peer to cluster: the
// config file named after the cluster, then its CA, certificate and key.
func MeshSecretKeys(cluster string) (config, ca, cert, key string) {
	return cluster, cluster + ".ca.crt", cluster + ".crt", cluster + ".key"
}

// MeshSecretFiles returns the keys of the clustermesh Secret (mounted by the
// peer's agents at /var/lib/podmesh/clustermesh) that let a peer reach
// cluster: "<cluster>" holding etcd-client YAML with relative file names, and
// "<cluster>.ca.crt", "<cluster>.crt", "<cluster>.key". Write them with
// WriteSecretVolume to get what a pod sees. podmesh-certs connect renders the
// same keys into a Secret manifest.
func MeshSecretFiles(cluster string, endpoints []string, caPEM, certPEM, keyPEM []byte) (map[string][]byte, error) {
	cfgKey, caKey, certKey, keyKey := MeshSecretKeys(cluster)
	body, err := yaml.Marshal(kvstore.ClientFile{
		Endpoints:     endpoints,
		TrustedCAFile: caKey,
		CertFile:      certKey,
		KeyFile:       keyKey,
	})
	if err != nil {
		return nil, fmt.Errorf("marshal etcd config for %s: %w", cluster, err)
	}
	files := map[string][]byte{cfgKey: body, caKey: caPEM, certKey: certPEM, keyKey: keyPEM}
	for k := range files {
		if err := ValidateSecretKey(k); err != nil {
			return nil, fmt.Errorf("cluster %q: %w", cluster, err)
		}
	}
	return files, nil
}

// The cache tier's local credential: what a cluster's own agents mount to
// read its clustermesh-apiserver's cache (daemonset/ expects these names).
const (
	// CacheSecretName is the Secret the agents mount at /var/lib/podmesh/cache.
	CacheSecretName = "podmesh-cache"
	// CacheConfigKey is the etcd-client YAML key of that Secret.
	CacheConfigKey = "cache.yaml"
	// CacheServiceName is the ClusterIP Service of the cache proxy.
	CacheServiceName = "clustermesh-apiserver-cache"
	// CachePort is the cache proxy's port (clustermesh-apiserver --cache-listen).
	CachePort = 2381
)

// CacheEndpoint is the in-cluster URL of the cache proxy in namespace.
func CacheEndpoint(namespace string) string {
	return ProxyEndpoint(CacheServiceName+"."+namespace+".svc", CachePort)
}

// CacheSecretFiles returns the keys of the podmesh-cache Secret: cache.yaml
// (etcd-client YAML with relative file names) and ca.crt, tls.crt, tls.key
// (a client certificate with CN LocalCN(cluster), issued by the cluster's
// own CA).
func CacheSecretFiles(endpoints []string, caPEM, certPEM, keyPEM []byte) (map[string][]byte, error) {
	body, err := yaml.Marshal(kvstore.ClientFile{Endpoints: endpoints, TrustedCAFile: "ca.crt", CertFile: "tls.crt", KeyFile: "tls.key"})
	if err != nil {
		return nil, fmt.Errorf("marshal the cache's etcd config: %w", err)
	}
	return map[string][]byte{CacheConfigKey: body, "ca.crt": caPEM, "tls.crt": certPEM, "tls.key": keyPEM}, nil
}
