#!/usr/bin/env bash
# Soak: one relay under steady mixed load for a long time; does anything grow?
#
#   bench/soak.sh [MINUTES]          (default 35; the first 5 are warm-up)
#
# Relay A (release build, TLS off, metrics on) meshed with relay B. On A, for the whole run:
#   - 10 000 idle clients (loadtest idle);
#   - 100 connects and disconnects per second (a 50-client storm each second: 50 connect, 50
#     reconnect, then all leave);
#   - 100 pairs exchanging paced traffic (50 packets/s each);
#   - SIGHUP every minute (certificate and rate-config reload path);
#   - relay B restarted every 5 minutes (A's mesh link breaks and reconnects).
# Every minute it samples A's RSS, open descriptors, threads, connections and drop counters into
# samples.csv and draws soak.svg. Pass: after warm-up, RSS stays within 5 % of its first
# post-warm-up sample and descriptors return to the same level (no leak).
# Results: bench/results/<timestamp>-soak/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MINUTES="${1:-35}"
BIN="$REPO/target/release/derper"
LT="$REPO/target/release/loadtest"
[[ -x "$BIN" && -x "$LT" ]] || { echo "build first: cargo build --release -p derper -p loadtest" >&2; exit 1; }
OUT="$REPO/bench/results/$(date -u +%Y%m%dT%H%M%SZ)-soak"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [[ -n "${B_PID:-}" ]] && kill "$B_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PA="$(free_port)"; PB="$(free_port)"; MA="$(free_port)"
printf '%s' "$(head -c 32 /dev/urandom | xxd -p -c 64)" >"$WORK/mesh.key"
cat >"$WORK/rate.json" <<'J'
{"PerClientRateLimitBytesPerSec": 10000000, "PerClientRateBurstBytes": 20000000}
J
start_b() {
    "$BIN" -a "127.0.0.1:$PB" --stun=false -c "$WORK/b.key" --mesh-psk-file "$WORK/mesh.key" \
        --mesh-allow-plain --mesh-with "http://127.0.0.1:$PA/derp" 2>>"$OUT/b.log" &
    B_PID=$!
}
"$BIN" -a "127.0.0.1:$PA" --stun=false -c "$WORK/a.key" --metrics-addr "127.0.0.1:$MA" \
    --mesh-psk-file "$WORK/mesh.key" --mesh-allow-plain --mesh-with "http://127.0.0.1:$PB/derp" \
    --rate-config "$WORK/rate.json" 2>"$OUT/a.log" &
A_PID=$!; pids+=("$A_PID")
start_b
until curl -fsS "http://127.0.0.1:$MA/readyz" >/dev/null 2>&1; do sleep 0.1; done
URL="http://127.0.0.1:$PA/derp"
SECS=$((MINUTES * 60))

"$LT" idle --url "$URL" --insecure --conns 10000 --hold "${SECS}s" --setup-timeout 300s \
    --json "$OUT/idle.json" >"$OUT/idle.txt" 2>&1 & pids+=($!)
"$LT" pairs --url "$URL" --insecure --pairs 100 --rate 50 --duration "${SECS}s" \
    --json "$OUT/pairs.json" >"$OUT/pairs.txt" 2>&1 & pids+=($!)
( end=$((SECONDS + SECS)); while ((SECONDS < end)); do
    "$LT" storm --url "$URL" --insecure --clients 50 --rounds 1 --round-timeout 5s >/dev/null 2>&1 || echo "churn round failed at ${SECONDS}s" >>"$OUT/churn-errors.txt"
    sleep 1
  done ) & pids+=($!)

metric() {
    # Read the whole page first: awk leaving early would fail curl (and, with pipefail, the run).
    curl -fsS "http://127.0.0.1:$MA/metrics" >"$WORK/metrics.txt" 2>/dev/null || true
    awk -v s="$1" '$1==s {print $2; exit}' "$WORK/metrics.txt"
}
echo "minute,rss_kb,fds,threads,connections,queue_head_drops,mesh_links_up" >"$OUT/samples.csv"
for ((m = 0; m <= MINUTES; m++)); do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$A_PID/status")
    thr=$(awk '/Threads/ {print $2}' "/proc/$A_PID/status")
    fds=$(ls "/proc/$A_PID/fd" | wc -l)
    conns=$(metric derp_current_connections); drops=$(metric 'derp_packets_dropped_total{reason="queue_head",kind="other"}')
    links=$(metric 'derp_mesh_links{state="up"}')
    echo "$m,$rss,$fds,$thr,${conns:-0},${drops:-0},${links:-0}" | tee -a "$OUT/samples.csv"
    ((m == MINUTES)) && break
    for s in 1 2 3 4 5 6; do sleep 10; done
    kill -HUP "$A_PID"
    if ((m % 5 == 4)); then kill "$B_PID"; wait "$B_PID" 2>/dev/null || true; start_b; fi
done
# Once the load has stopped, wait (up to a minute) for its clients to be gone, then take one
# more sample: the descriptors a relay keeps with nobody connected but its mesh peer.
for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done
for _ in $(seq 60); do
    conns=$(metric derp_current_connections)
    ((${conns:-0} <= 1)) && break
    sleep 1
done
rss=$(awk '/VmRSS/ {print $2}' "/proc/$A_PID/status")
thr=$(awk '/Threads/ {print $2}' "/proc/$A_PID/status")
fds=$(ls "/proc/$A_PID/fd" | wc -l)
echo "$((MINUTES + 1)),$rss,$fds,$thr,${conns:-0},$(metric 'derp_packets_dropped_total{reason="queue_head",kind="other"}'),$(metric 'derp_mesh_links{state="up"}')" |
    tee -a "$OUT/samples.csv"
python3 "$REPO/bench/soak_plot.py" "$OUT/samples.csv" "$OUT/soak.svg" | tee "$OUT/verdict.txt"
echo "command: bench/soak.sh $MINUTES" >>"$OUT/verdict.txt"
