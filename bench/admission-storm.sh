#!/usr/bin/env bash
# A reconnect storm against a relay with admission: how many webhook calls it costs.
#
#   bench/admission-storm.sh [CLIENTS] [ROUNDS]        (default 10000 clients, 3 rounds)
#
# Starts bench/admission-hook (a webhook speaking derper's JSON: allows everyone, counts calls
# and the most calls in flight at once), our derper with --verify-client-url pointing at it, then
# `loadtest storm`: CLIENTS clients connect, then all reconnect at once, ROUNDS times. Without
# the decision cache every connection would be one call (CLIENTS x (ROUNDS + 1)); with it the
# first connect of each key is one call and reconnects within the positive TTL are none.
# Prints the loadtest summary, the call counts and the relay's admission metrics; writes them
# to bench/results/<timestamp>-admission-storm/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS="${1:-10000}"
ROUNDS="${2:-3}"
BIN="${DERPER_BIN:-$REPO/target/release/derper}"
LOADTEST="${LOADTEST_BIN:-$REPO/target/release/loadtest}"
[[ -x "$BIN" && -x "$LOADTEST" ]] || { echo "build first: cargo build --release -p derper -p loadtest" >&2; exit 1; }
OUT="$REPO/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-admission-storm"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HOOK_PORT="$(free_port)"; RELAY_PORT="$(free_port)"; METRICS_PORT="$(free_port)"

(cd "$REPO/bench/admission-hook" && go build -o "$WORK/admission-hook" .)
"$WORK/admission-hook" -addr "127.0.0.1:$HOOK_PORT" & pids+=($!)
"$BIN" -a "127.0.0.1:$RELAY_PORT" --stun=false -c "$WORK/derper.key" \
    --metrics-addr "127.0.0.1:$METRICS_PORT" \
    --verify-client-url "http://127.0.0.1:$HOOK_PORT/verify" 2>"$WORK/derper.log" & pids+=($!)
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 && curl -fsS "http://127.0.0.1:$HOOK_PORT/" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "storm: $CLIENTS clients, $ROUNDS reconnect rounds, webhook at :$HOOK_PORT"
"$LOADTEST" storm --url "http://127.0.0.1:$RELAY_PORT/derp" --insecure \
    --clients "$CLIENTS" --rounds "$ROUNDS" --json "$OUT/storm.json" 2>&1 | tee "$OUT/storm.txt" || true
hook="$(curl -fsS "http://127.0.0.1:$HOOK_PORT/")"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^derp_admission' >"$OUT/metrics.txt"
connections=$((CLIENTS * (ROUNDS + 1)))
calls="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["calls"])' "$hook")"
peak="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["peak_in_flight"])' "$hook")"
{
    echo "connections admitted: $connections ($CLIENTS clients x $((ROUNDS + 1)) connects)"
    echo "webhook calls: $calls (without the cache: $connections)"
    echo "most calls in flight at once: $peak (limit 64)"
    cat "$OUT/metrics.txt"
} | tee "$OUT/summary.txt"
echo "command: bench/admission-storm.sh $CLIENTS $ROUNDS" >>"$OUT/summary.txt"
