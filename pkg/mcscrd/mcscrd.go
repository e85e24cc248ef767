package mcscrd

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/mcs-api/config/crd"
	"sigs.k8s.io/yaml"
)

// FieldManager is the server-side apply field manager of Install.
const FieldManager = "podmesh"

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// YAML returns the CRD manifests embedded in sigs.k8s.io/mcs-api, in the
// order they should be applied: ServiceExport, then ServiceImport.
func YAML() [][]byte {
	return [][]byte{crd.ServiceExportCRD, crd.ServiceImportCRD}
}

// Objects parses YAML into objects ready to apply.
func Objects() ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, y := range YAML() {
		var m map[string]any
		if err := yaml.Unmarshal(y, &m); err != nil {
			return nil, fmt.Errorf("parse embedded MCS CRD: %w", err)
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() != "CustomResourceDefinition" || u.GetName() == "" {
			return nil, fmt.Errorf("embedded MCS CRD: unexpected object %s %q", u.GetKind(), u.GetName())
		}
		out = append(out, u)
	}
	return out, nil
}

// Install applies the MCS CRDs to the cluster of cfg and waits until both
// are Established or ctx is done.
func Install(ctx context.Context, cfg *rest.Config) error {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("install MCS CRDs: dynamic client: %w", err)
	}
	objs, err := Objects()
	if err != nil {
		return err
	}
	crds := client.Resource(crdResource)
	for _, o := range objs {
		if _, err := crds.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
			return fmt.Errorf("apply CRD %s: %w", o.GetName(), err)
		}
	}
	for _, o := range objs {
		err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			cur, err := crds.Get(ctx, o.GetName(), metav1.GetOptions{})
			if err != nil {
				return false, nil // transient; the deadline decides
			}
			return established(cur), nil
		})
		if err != nil {
			return fmt.Errorf("wait for CRD %s to be established: %w", o.GetName(), err)
		}
	}
	return nil
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
