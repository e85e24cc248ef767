package importer

import (
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
)

// Test helpers for the external test package (importer_test), which may
// import packages that import this one (the server).

type Kube = kube

type ConfigDir = configDir

var (
	StartKube   = startKube
	RunImporter = runImporter
	AddrsOf     = addrsOf
)

const WaitFor = waitFor

func (k *kube) MCS() mcsclient.Interface { return k.mcs }

func (k *kube) Namespace(t testing.TB, name string) { k.namespace(t, name) }

func (k *kube) SlicesOf(t testing.TB, namespace, name, cluster string) []discoveryv1.EndpointSlice {
	return k.slicesOf(t, namespace, name, cluster)
}
