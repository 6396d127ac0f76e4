package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// fieldManager owns the fields the sandbox applies.
const fieldManager = "meshca-sandbox"

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// ApplyYAML server-side applies every object of a (multi-document) YAML or
// JSON file, like `kubectl apply --server-side --force-conflicts`, and waits
// until the CustomResourceDefinitions among them are Established. Namespaced
// objects without a namespace go to "default". Kinds that appear only after
// a CRD of the same file is established are retried for up to 30s.
func (c *Cluster) ApplyYAML(ctx context.Context, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("apply %s: %w", file, err)
	}
	objs, err := decodeObjects(data)
	if err != nil {
		return fmt.Errorf("apply %s: %w", file, err)
	}
	var crds []string
	for _, obj := range objs {
		if err := c.applyObject(ctx, obj); err != nil {
			return fmt.Errorf("apply %s: %w", file, err)
		}
		if obj.GroupVersionKind().GroupKind() == (schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}) {
			crds = append(crds, obj.GetName())
		}
	}
	for _, name := range crds {
		if err := c.waitEstablished(ctx, name); err != nil {
			return fmt.Errorf("apply %s: %w", file, err)
		}
	}
	if len(crds) > 0 {
		c.mapper.Reset() // new kinds are now served
	}
	return nil
}

// decodeObjects splits a YAML or JSON stream into objects, skipping empty
// documents.
func decodeObjects(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for i := 0; ; i++ {
		var raw map[string]any
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decode document %d: %w", i, err)
		}
		if len(raw) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{Object: raw}
		if obj.GetKind() == "" || obj.GetAPIVersion() == "" || obj.GetName() == "" {
			return nil, fmt.Errorf("document %d: apiVersion, kind and metadata.name are required", i)
		}
		objs = append(objs, obj)
	}
}

func (c *Cluster) applyObject(ctx context.Context, obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()
	ref := fmt.Sprintf("%s %s", gvk.Kind, obj.GetName())
	var mapping *meta.RESTMapping
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		var err error
		mapping, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			c.mapper.Reset()
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("find resource for %s (%s): %w", ref, gvk.GroupVersion(), err)
	}
	data, err := obj.MarshalJSON()
	if err != nil {
		return fmt.Errorf("encode %s: %w", ref, err)
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: &force}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := obj.GetNamespace()
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		_, err = c.dynamic.Resource(mapping.Resource).Namespace(ns).Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
		ref = fmt.Sprintf("%s %s/%s", gvk.Kind, ns, obj.GetName())
	} else {
		_, err = c.dynamic.Resource(mapping.Resource).Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
	}
	if err != nil {
		return fmt.Errorf("server-side apply %s: %w", ref, err)
	}
	return nil
}

// waitEstablished waits until the named CRD has condition Established=True.
func (c *Cluster) waitEstablished(ctx context.Context, name string) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		crd, err := c.dynamic.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" {
				if m["status"] == "True" {
					return true, nil
				}
				last = fmt.Sprintf("Established=%v: %v", m["status"], m["message"])
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("wait for CRD %s to be established: %w (last: %s)", name, err, last)
	}
	return nil
}
