package interop

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"tailscale.com/tailcfg"
)

// TestLiveDERPMapIsATailcfgDERPMap: our /derpmap decodes into Tailscale's own tailcfg.DERPMap
// with unknown fields refused, and describes this node as a client would dial it. Tailscale's
// derper serves no such endpoint (its home page answers), which the same test asserts.
func TestLiveDERPMapIsATailcfgDERPMap(t *testing.T) {
	for _, m := range allModes {
		t.Run(string(m), func(t *testing.T) {
			s := startServer(t, serverOpts{mode: m, oursArgs: []string{
				"--derp-map-region-id=901", "--derp-map-region-code=lab", "--derp-map-region-name=Lab",
				"--derp-map-node-name=901a", "--derp-map-ipv4=127.0.0.1",
			}})
			res, err := s.httpClient().Get(s.baseURL() + "/derpmap")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if flavor() == "tailscale" {
				// Its catch-all home page answers instead: no map in it.
				var dm tailcfg.DERPMap
				if json.Unmarshal(body, &dm) == nil && len(dm.Regions) > 0 {
					t.Fatalf("Tailscale's derper served a DERP map at /derpmap: %s", body)
				}
				return
			}
			if res.StatusCode != http.StatusOK {
				t.Fatalf("/derpmap: %v %s", res.Status, body)
			}
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			var dm tailcfg.DERPMap
			if err := dec.Decode(&dm); err != nil {
				t.Fatalf("not a tailcfg.DERPMap: %v\n%s", err, body)
			}
			r := dm.Regions[901]
			if r == nil || r.RegionCode != "lab" || len(r.Nodes) != 1 {
				t.Fatalf("region 901 = %+v\n%s", r, body)
			}
			n := r.Nodes[0]
			if n.Name != "901a" || n.RegionID != 901 || n.IPv4 != "127.0.0.1" || n.DERPPort != s.port || n.STUNPort != s.stunPort {
				t.Fatalf("node = %+v, want 901a at 127.0.0.1:%d (STUN %d)", n, s.port, s.stunPort)
			}
			if m == modeTLS && n.CertName != s.certPin {
				t.Fatalf("CertName = %q, want the pin %q", n.CertName, s.certPin)
			}
			if m == modeTLS && n.HostName != "127.0.0.1" {
				t.Fatalf("HostName = %q", n.HostName)
			}
		})
	}
}
