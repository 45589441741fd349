//go:build deploymaps

// Package derpmap checks the DERP maps the deployment tooling generates with Tailscale's own
// tailcfg.DERPMap, the type every Tailscale client, Headscale and the derper decode into.
// tests/deploy.sh runs it (go test -tags deploymaps) after rendering the maps:
//
//	DERPMAP_JSON   comma-separated JSON maps (Terraform derp_map_json, the chart's ConfigMap)
//	DERPMAP_POLICY a Tailscale policy file's derpMap value (JSON)
//	DERPMAP_YAML   the Terraform YAML for Headscale derp.paths, decoded as Headscale does
//	               (gopkg.in/yaml.v3 into tailcfg.DERPMap)
//	DERPMAP_FIXTURE_JSON / _YAML  the Terraform test fixture's outputs, checked field by field
//
// Strict: an unknown field fails (json DisallowUnknownFields, yaml KnownFields), and each JSON
// map must survive a round trip through tailcfg.DERPMap unchanged, so no field was misnamed or
// mistyped and dropped.
package derpmap

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
	"tailscale.com/tailcfg"
)

func files(t *testing.T, env string) []string {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		t.Fatalf("%s is not set (tests/deploy.sh sets it)", env)
	}
	return strings.Split(v, ",")
}

func decodeJSON(t *testing.T, path string) *tailcfg.DERPMap {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var m tailcfg.DERPMap
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("%s: tailcfg.DERPMap refuses it: %v", path, err)
	}
	// Round trip: what Go writes back must be what we wrote (omitempty leaves out the same
	// zero values the generators leave out).
	back, err := json.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	var want, got any
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(back, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(want, got) {
		t.Errorf("%s changes in a tailcfg.DERPMap round trip:\nwrote %s\nGo    %s", path, raw, back)
	}
	checkConsistent(t, path, &m)
	return &m
}

func decodeYAML(t *testing.T, path string) *tailcfg.DERPMap {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var m tailcfg.DERPMap
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("%s: yaml.v3 into tailcfg.DERPMap (as Headscale's derp.paths) refuses it: %v", path, err)
	}
	checkConsistent(t, path, &m)
	return &m
}

// checkConsistent applies the rules clients rely on: region keys match RegionIDs, every node
// names its region, node names are unique, every region has nodes and a code.
func checkConsistent(t *testing.T, path string, m *tailcfg.DERPMap) {
	t.Helper()
	if len(m.Regions) == 0 {
		t.Errorf("%s: no regions", path)
	}
	names := map[string]bool{}
	for id, r := range m.Regions {
		if r == nil || r.RegionID != id || r.RegionCode == "" || len(r.Nodes) == 0 {
			t.Errorf("%s: region key %d: %+v", path, id, r)
			continue
		}
		for _, n := range r.Nodes {
			if n.RegionID != id || n.HostName == "" || n.Name == "" || names[n.Name] {
				t.Errorf("%s: region %d node %+v", path, id, n)
			}
			names[n.Name] = true
		}
	}
}

func TestGeneratedJSONMaps(t *testing.T) {
	for _, f := range files(t, "DERPMAP_JSON") {
		decodeJSON(t, f)
	}
}

func TestPolicyDERPMap(t *testing.T) {
	m := decodeJSON(t, os.Getenv("DERPMAP_POLICY"))
	if !m.OmitDefaultRegions {
		t.Error("the fixture's policy map sets omitDefaultRegions")
	}
}

func TestHeadscaleYAMLEqualsJSON(t *testing.T) {
	fromYAML := decodeYAML(t, os.Getenv("DERPMAP_FIXTURE_YAML"))
	fromJSON := decodeJSON(t, os.Getenv("DERPMAP_FIXTURE_JSON"))
	if !reflect.DeepEqual(fromYAML, fromJSON) {
		y, _ := json.Marshal(fromYAML)
		j, _ := json.Marshal(fromJSON)
		t.Errorf("YAML and JSON outputs differ once decoded:\nyaml %s\njson %s", y, j)
	}
}

// TestFixtureFields pins what terraform/modules/derp-map/tests/fixture asks for, as Go sees it.
func TestFixtureFields(t *testing.T) {
	m := decodeJSON(t, os.Getenv("DERPMAP_FIXTURE_JSON"))
	fra, nyc := m.Regions[900], m.Regions[901]
	if fra == nil || nyc == nil || len(m.Regions) != 2 {
		t.Fatalf("regions %v", m.Regions)
	}
	if fra.RegionCode != "fra" || fra.RegionName != "Frankfurt" || fra.Latitude != 50.11 || fra.Longitude != 8.68 || fra.Avoid {
		t.Errorf("fra %+v", fra)
	}
	want0 := tailcfg.DERPNode{Name: "900a", RegionID: 900, HostName: "derp-0.fra.example.com", IPv4: "203.0.113.10", IPv6: "2001:db8::10"}
	if *fra.Nodes[0] != want0 {
		t.Errorf("900a = %+v", *fra.Nodes[0])
	}
	if n := fra.Nodes[1]; n.IPv6 != "none" || !n.CanPort80 {
		t.Errorf("900b = %+v", *n)
	}
	if !nyc.Avoid || nyc.NoMeasureNoHome {
		t.Errorf("nyc %+v", nyc)
	}
	want1 := tailcfg.DERPNode{Name: "901a", RegionID: 901, HostName: "derp-0.nyc.example.com", CertName: "derp.nyc.example.com", STUNPort: 3479, DERPPort: 8443}
	if *nyc.Nodes[0] != want1 {
		t.Errorf("901a = %+v", *nyc.Nodes[0])
	}
	if n := nyc.Nodes[1]; !n.STUNOnly || n.STUNPort != 0 {
		t.Errorf("901s = %+v", *n)
	}
}
