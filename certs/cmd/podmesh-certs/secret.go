package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"sigs.k8s.io/yaml"

	"github.com/podmesh/podmesh/certs"
	"github.com/podmesh/podmesh/pkg/kvstore"
)

// Names the manifests in daemonset/ expect.
const (
	defaultNamespace       = "podmesh-system"
	defaultMeshSecret      = "podmesh-clustermesh"
	defaultServerTLSSecret = "clustermesh-apiserver-tls"
	defaultProxyPort       = 32379
	partOfLabel            = "app.kubernetes.io/part-of"
	partOfValue            = "podmesh"
)

// secretManifest is the subset of a v1 Secret podmesh writes and reads. It is
// its own type (not corev1.Secret) so the YAML carries no empty status or
// creationTimestamp fields.
type secretManifest struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   secretMetadata    `json:"metadata"`
	Type       string            `json:"type"`
	Data       map[string][]byte `json:"data"`
}

type secretMetadata struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
}

func newSecret(name, namespace, typ string) *secretManifest {
	return &secretManifest{
		APIVersion: "v1",
		Kind:       "Secret",
		Metadata: secretMetadata{
			Name:      name,
			Namespace: namespace,
			Labels:    map[string]string{partOfLabel: partOfValue},
		},
		Type: typ,
		Data: map[string][]byte{},
	}
}

func (s *secretManifest) marshal() ([]byte, error) {
	b, err := yaml.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("marshal secret %s/%s: %w", s.Metadata.Namespace, s.Metadata.Name, err)
	}
	return b, nil
}

// readSecretFile reads a Secret manifest podmesh-certs wrote earlier; a
// missing file returns (nil, nil).
func readSecretFile(path string) (*secretManifest, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read secret manifest %s: %w", path, err)
	}
	var s secretManifest
	if err := yaml.UnmarshalStrict(data, &s); err != nil {
		return nil, fmt.Errorf("secret manifest %s: %w", path, err)
	}
	if s.APIVersion != "v1" || s.Kind != "Secret" {
		return nil, fmt.Errorf("secret manifest %s: is %s %s, not a v1 Secret", path, s.APIVersion, s.Kind)
	}
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	return &s, nil
}

// etcdClientConfig is the etcd-client YAML the agent reads.
type etcdClientConfig = kvstore.ClientFile

func proxyEndpoint(address string, port int) string { return certs.ProxyEndpoint(address, port) }

func meshSecretFiles(cluster string, endpoints []string, caPEM, certPEM, keyPEM []byte) (map[string][]byte, error) {
	return certs.MeshSecretFiles(cluster, endpoints, caPEM, certPEM, keyPEM)
}

// meshSecretKeys lists the keys meshSecretFiles writes for cluster.
func meshSecretKeys(cluster string) []string {
	cfg, ca, cert, key := certs.MeshSecretKeys(cluster)
	return []string{cfg, ca, cert, key}
}
