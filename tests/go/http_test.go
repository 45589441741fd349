package interop

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func do(t *testing.T, s *server, method, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.baseURL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := s.httpClient().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, string(body)
}

// TestProbeEndpoints: /derp/probe and /derp/latency-check answer GET and
// HEAD with 200, empty body, "Access-Control-Allow-Origin: *"; other methods
// get 405 with body "bogus probe method\n" (Go http.Error format).
func TestProbeEndpoints(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		for _, path := range []string{"/derp/probe", "/derp/latency-check"} {
			for _, method := range []string{"GET", "HEAD"} {
				resp, body := do(t, s, method, path, nil)
				if resp.StatusCode != 200 || body != "" {
					t.Errorf("%s %s = %d %q, want 200 \"\"", method, path, resp.StatusCode, body)
				}
				if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
					t.Errorf("%s %s: Access-Control-Allow-Origin = %q, want *", method, path, got)
				}
			}
			for _, method := range []string{"POST", "PUT", "DELETE"} {
				resp, body := do(t, s, method, path, nil)
				if resp.StatusCode != 405 || body != "bogus probe method\n" {
					t.Errorf("%s %s = %d %q, want 405 \"bogus probe method\\n\"", method, path, resp.StatusCode, body)
				}
				if got := resp.Header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
					t.Errorf("%s %s: Content-Type = %q", method, path, got)
				}
				if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
					t.Errorf("%s %s: unexpected Access-Control-Allow-Origin %q", method, path, got)
				}
			}
		}
	})
}

// TestDERPWithoutUpgrade: GET /derp without an acceptable Upgrade header is
// 426 "DERP requires connection upgrade\n".
func TestDERPWithoutUpgrade(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		for _, hdr := range []map[string]string{
			nil,
			{"Upgrade": "h2c", "Connection": "Upgrade"},
			// websocket with a derp subprotocol goes to the WebSocket
			// handler; without Sec-WebSocket-Key etc. that fails too, but
			// with a different status (coder/websocket: 400). Not tested.
		} {
			resp, body := do(t, s, "GET", "/derp", hdr)
			if resp.StatusCode != http.StatusUpgradeRequired || body != "DERP requires connection upgrade\n" {
				t.Errorf("GET /derp %v = %d %q, want 426 \"DERP requires connection upgrade\\n\"", hdr, resp.StatusCode, body)
			}
		}
	})
}

// TestGenerate204: captive-portal check. A valid challenge (<= 64 chars of
// [A-Za-z0-9._:-]) is echoed as "X-Tailscale-Response: response <challenge>";
// an invalid one is ignored. Always 204 with the no-cache header, empty body.
func TestGenerate204(t *testing.T) {
	forEachMode(t, allModes, func(t *testing.T, s *server) {
		cases := []struct {
			challenge string
			want      string
		}{
			{"ts_127.0.0.1", "response ts_127.0.0.1"},
			{"", ""},
			{"ts_derp1.example.com:80-x", "response ts_derp1.example.com:80-x"},
			{strings.Repeat("a", 64), "response " + strings.Repeat("a", 64)},
			{strings.Repeat("a", 65), ""},
			{"ts_bad/char", ""},
			{"ts bad space", ""},
		}
		for _, tc := range cases {
			for _, method := range []string{"GET", "POST"} {
				hdr := map[string]string{}
				if tc.challenge != "" {
					hdr["X-Tailscale-Challenge"] = tc.challenge
				}
				resp, body := do(t, s, method, "/generate_204?t=1700000000", hdr)
				if resp.StatusCode != 204 || body != "" {
					t.Errorf("%s /generate_204 %q = %d %q, want 204 \"\"", method, tc.challenge, resp.StatusCode, body)
				}
				if got := resp.Header.Get("X-Tailscale-Response"); got != tc.want {
					t.Errorf("challenge %q: X-Tailscale-Response = %q, want %q", tc.challenge, got, tc.want)
				}
				if got, want := resp.Header.Get("Cache-Control"), "no-cache, no-store, must-revalidate, no-transform, max-age=0"; got != want {
					t.Errorf("Cache-Control = %q, want %q", got, want)
				}
			}
		}
	})
}
