// Command kubevalidate decodes rendered Kubernetes manifests strictly against the Go API types
// of a pinned Kubernetes release (k8s.io/api, go.mod) and of the CRDs the derper chart uses
// (prometheus-operator's ServiceMonitor and PrometheusRule, cert-manager's Certificate).
//
// Strict means what the API server's strict field validation means: an unknown field, a
// duplicate field or a value of the wrong type fails the document. A kind this program has no
// type for fails too, so a typo in apiVersion or kind cannot pass unchecked.
//
//	helm template ... | kubevalidate -          # or: kubevalidate FILE...
//	kubevalidate -print-key derpmap.json FILE   # validate, then print that ConfigMap key
//	kubevalidate -openapi DIR FILE              # and against the release's OpenAPI v3 spec
//
// Prints one line per document and exits 1 if any failed. With -print-key the report goes to
// stderr and stdout holds only the value of that key of the ConfigMaps that have it.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme,
		networkingv1.AddToScheme, rbacv1.AddToScheme,
		monitoringv1.AddToScheme, certmanagerv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// document is one YAML document of the input, with where it came from.
type document struct {
	source string
	index  int
	yaml   []byte
}

func readDocuments(name string, r io.Reader) ([]document, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var docs []document
	for i := 0; ; i++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, i, err)
		}
		if isEmpty(raw) {
			continue
		}
		docs = append(docs, document{source: name, index: i, yaml: raw})
	}
}

// isEmpty reports whether a document holds only comments and blank lines (Helm renders those
// for disabled templates).
func isEmpty(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		t := strings.TrimSpace(string(line))
		if t != "" && t != "---" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

// check decodes one document strictly (and validates it against the OpenAPI schemas when api
// is set) and returns a short description of it, and the value of data[printKey] if it is a
// ConfigMap with that key.
func check(decoder runtime.Decoder, api *openAPI, doc document, printKey string) (string, string, error) {
	// YAMLToJSONStrict refuses duplicate keys, which a plain YAML decode would let the last win.
	js, err := yaml.YAMLToJSONStrict(doc.yaml)
	if err != nil {
		return "", "", fmt.Errorf("not valid YAML: %w", err)
	}
	obj, gvk, err := decoder.Decode(js, nil, nil)
	if err != nil {
		return "", "", err
	}
	schemaNote := ""
	if api != nil {
		covered, err := api.validate(*gvk, js)
		if err != nil {
			return "", "", err
		}
		if covered {
			schemaNote = " (+openapi)"
		}
	}
	if rule, ok := obj.(*monitoringv1.PrometheusRule); ok {
		if err := checkRules(rule); err != nil {
			return "", "", err
		}
	}
	var value string
	if cm, ok := obj.(*corev1.ConfigMap); ok && printKey != "" {
		value = cm.Data[printKey]
	}
	meta, ok := obj.(interface {
		GetName() string
		GetNamespace() string
	})
	if !ok || meta.GetName() == "" {
		return "", "", fmt.Errorf("%s has no metadata.name", gvk.Kind)
	}
	return fmt.Sprintf("%s %s %s%s", gvk.GroupVersion(), gvk.Kind, meta.GetName(), schemaNote), value, nil
}

func main() {
	printKey := flag.String("print-key", "", "print data[KEY] of every ConfigMap that has it")
	openAPIDir := flag.String("openapi", "", "also validate against the OpenAPI v3 schemas in `DIR` (k8s.io/kubernetes api/openapi-spec/v3)")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: kubevalidate [-print-key KEY] FILE... (- for stdin)")
		os.Exit(2)
	}
	report := os.Stdout
	if *printKey != "" {
		report = os.Stderr
	}
	scheme, err := newScheme()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubevalidate: scheme:", err)
		os.Exit(2)
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	var api *openAPI
	if *openAPIDir != "" {
		if api, err = loadOpenAPI(*openAPIDir); err != nil {
			fmt.Fprintln(os.Stderr, "kubevalidate: openapi:", err)
			os.Exit(2)
		}
	}

	var docs []document
	for _, name := range flag.Args() {
		var r io.Reader = os.Stdin
		if name != "-" {
			f, err := os.Open(name)
			if err != nil {
				fmt.Fprintln(os.Stderr, "kubevalidate:", err)
				os.Exit(2)
			}
			defer f.Close()
			r = f
		}
		d, err := readDocuments(name, r)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kubevalidate:", err)
			os.Exit(1)
		}
		docs = append(docs, d...)
	}
	if len(docs) == 0 {
		fmt.Fprintln(os.Stderr, "kubevalidate: no documents")
		os.Exit(1)
	}
	failed := 0
	for _, doc := range docs {
		what, value, err := check(decoder, api, doc, *printKey)
		if err != nil {
			failed++
			fmt.Fprintf(report, "FAIL %s#%d: %v\n", doc.source, doc.index, err)
			continue
		}
		fmt.Fprintf(report, "ok   %s\n", what)
		if value != "" {
			fmt.Print(value)
		}
	}
	fmt.Fprintf(report, "%d documents, %d failed\n", len(docs), failed)
	if failed > 0 {
		os.Exit(1)
	}
}
