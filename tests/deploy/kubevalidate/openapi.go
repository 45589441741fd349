package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// openAPI validates objects against the OpenAPI v3 schemas a Kubernetes release publishes
// (api/openapi-spec/v3 of the k8s.io/kubernetes module): required fields, types and,
// because every object schema is closed (additionalProperties: false, as kubeconform's
// -strict does), unknown fields. Kinds the spec does not define (CRDs) are not covered here,
// and neither are enum values and cross-field rules: the published spec does not carry them
// (the API server's validation code does).
type openAPI struct {
	compiler *jsonschema.Compiler
	// gvk → the compiled-schema location of its definition.
	locations map[schema.GroupVersionKind]string
	compiled  map[string]*jsonschema.Schema
}

func loadOpenAPI(dir string) (*openAPI, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_openapi.json"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no *_openapi.json in %s", dir)
	}
	o := &openAPI{
		compiler:  jsonschema.NewCompiler(),
		locations: map[schema.GroupVersionKind]string{},
		compiled:  map[string]*jsonschema.Schema{},
	}
	o.compiler.DefaultDraft(jsonschema.Draft2020)
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		components, _ := doc.(map[string]any)["components"].(map[string]any)
		schemas, _ := components["schemas"].(map[string]any)
		if len(schemas) == 0 {
			continue
		}
		url := "file:///openapi/" + filepath.Base(path)
		for name, s := range schemas {
			close(s)
			for _, gvk := range gvks(s) {
				if _, seen := o.locations[gvk]; !seen {
					o.locations[gvk] = url + "#/components/schemas/" + name
				}
			}
		}
		// Only the schemas: the rest of the document is not a schema.
		if err := o.compiler.AddResource(url, map[string]any{"components": map[string]any{"schemas": schemas}}); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return o, nil
}

// close sets additionalProperties: false on every object schema that lists its properties and
// does not say it keeps unknown fields.
func close(node any) {
	switch v := node.(type) {
	case map[string]any:
		_, hasProps := v["properties"]
		_, hasAdditional := v["additionalProperties"]
		preserve, _ := v["x-kubernetes-preserve-unknown-fields"].(bool)
		if hasProps && !hasAdditional && !preserve {
			v["additionalProperties"] = false
		}
		for _, child := range v {
			close(child)
		}
	case []any:
		for _, child := range v {
			close(child)
		}
	}
}

func gvks(s any) []schema.GroupVersionKind {
	m, _ := s.(map[string]any)
	list, _ := m["x-kubernetes-group-version-kind"].([]any)
	var out []schema.GroupVersionKind
	for _, item := range list {
		g, _ := item.(map[string]any)
		str := func(k string) string { v, _ := g[k].(string); return v }
		out = append(out, schema.GroupVersionKind{Group: str("group"), Version: str("version"), Kind: str("kind")})
	}
	return out
}

// validate checks one document's JSON. covered is false for kinds the spec does not define.
func (o *openAPI) validate(gvk schema.GroupVersionKind, js []byte) (covered bool, err error) {
	loc, ok := o.locations[gvk]
	if !ok {
		return false, nil
	}
	sch, ok := o.compiled[loc]
	if !ok {
		if sch, err = o.compiler.Compile(loc); err != nil {
			return true, fmt.Errorf("compiling the schema of %s: %w", gvk, err)
		}
		o.compiled[loc] = sch
	}
	inst, err := jsonschema.UnmarshalJSON(strings.NewReader(string(js)))
	if err != nil {
		return true, err
	}
	if err := sch.Validate(inst); err != nil {
		return true, fmt.Errorf("OpenAPI schema of Kubernetes: %#v", err)
	}
	return true, nil
}
