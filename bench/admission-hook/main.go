// Command admission-hook is a bench stand-in for an admission webhook (Headscale's /verify):
// it speaks derper's JSON, allows every node key, and counts calls and the most calls in
// flight at once. GET / reports the counts as JSON.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"strings"
	"sync/atomic"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	var calls, inFlight, peak atomic.Int64
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			json.NewEncoder(w).Encode(map[string]int64{"calls": calls.Load(), "peak_in_flight": peak.Load()})
			return
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		calls.Add(1)
		var req struct{ NodePublic string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !strings.HasPrefix(req.NodePublic, "nodekey:") {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Write([]byte(`{"Allow":true}`))
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
