package kube

import (
	"reflect"
	"testing"

	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"
)

// TestWithContextKeepsEveryOverride sets every exported field of the flags
// and checks that the copy for another context carries each of them, so a
// field added to ConfigFlags and forgotten here fails.
func TestWithContextKeepsEveryOverride(t *testing.T) {
	base := genericclioptions.NewConfigFlags(true)
	v := reflect.ValueOf(base).Elem()
	typ := v.Type()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		switch f.Type.String() {
		case "*string":
			s := "value-of-" + f.Name
			v.Field(i).Set(reflect.ValueOf(&s))
		case "*bool":
			b := true
			v.Field(i).Set(reflect.ValueOf(&b))
		case "*[]string":
			ss := []string{"value-of-" + f.Name}
			v.Field(i).Set(reflect.ValueOf(&ss))
		case "func(*rest.Config) *rest.Config":
			v.Field(i).Set(reflect.ValueOf(func(c *rest.Config) *rest.Config { return c }))
		default:
			t.Fatalf("ConfigFlags.%s has type %s this test does not know: copy it in WithContext and set it here", f.Name, f.Type)
		}
	}
	got := reflect.ValueOf(WithContext(base, "east")).Elem()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		if f.Name == "Context" {
			if c := got.Field(i).Interface().(*string); c == nil || *c != "east" {
				t.Errorf("Context = %v, want east", c)
			}
			continue
		}
		if got.Field(i).IsNil() {
			t.Errorf("WithContext drops %s", f.Name)
			continue
		}
		if f.Type.Kind() == reflect.Pointer && got.Field(i).Pointer() != v.Field(i).Pointer() {
			t.Errorf("WithContext does not keep %s", f.Name)
		}
	}
	if c := WithContext(base, ""); *c.Context != "value-of-Context" {
		t.Errorf("an empty name must keep the base context, got %q", *c.Context)
	}
}
