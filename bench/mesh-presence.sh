#!/usr/bin/env bash
# Presence convergence in a meshed region of our relays, with CLIENTS idle clients per node:
#   join:  node A holds CLIENTS clients; node B starts meshed with A. Time from B accepting
#          connections until B's link to A announces every one of A's clients
#          (derp_mesh_link_keys{peer=A}).
#   churn: CLIENTS clients connect to B. Time from B counting them all
#          (derp_current_connections) until A's link to B announces them all.
#   restart: B is killed with SIGKILL and restarted; time until it knows A's clients again.
# (One process holds at most 20 000 open files here, so 10 000 clients per node is the most.)
# Usage: CLIENTS=10000 bench/mesh-presence.sh      (prints a small table; JSON-free)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=${CLIENTS:-10000}
OURS=$REPO/target/release/derper
LT=$REPO/target/release/loadtest
(cd "$REPO" && cargo build --release -q -p derper -p loadtest)
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
BASE=$((20000 + RANDOM % 20000))
PA=$BASE PB=$((BASE + 1)) MA=$((BASE + 2)) MB=$((BASE + 3))
printf '%064x' 0 | tr 0 7 >"$WORK/psk"
PEERS="http://127.0.0.1:$PA/derp,http://127.0.0.1:$PB/derp"

now_ms() { date +%s%3N; }
metric() { # metric PORT NAME [LABEL_SUBSTRING]
  curl -s "http://127.0.0.1:$1/metrics" | grep "^$2" | grep -F -- "${3:-}" | awk '{print $2}' | head -1
}
wait_port() { for _ in $(seq 500); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.01; done; return 1; }
wait_metric_ge() { # PORT NAME LABEL MIN
  for _ in $(seq 3000); do
    v=$(metric "$1" "$2" "$3"); v=${v%.*}
    [ -n "$v" ] && [ "$v" -ge "$4" ] && return 0
    sleep 0.01
  done
  echo "timed out waiting for $2{$3} >= $4" >&2; return 1
}
start_node() { # NAME PORT METRICS_PORT
  "$OURS" -a "127.0.0.1:$2" -c "$WORK/$1.key" -stun=false --metrics-addr "127.0.0.1:$3" \
    --mesh-psk-file "$WORK/psk" --mesh-with "$PEERS" --mesh-allow-plain >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  LAST=$!
}

echo "| measurement (our derper, $CLIENTS idle clients per node) | ms |"
echo "|---|---|"
start_node a "$PA" "$MA"; wait_port "$PA"; PID_A=$LAST
"$LT" idle --url "http://127.0.0.1:$PA/derp" --conns "$CLIENTS" --hold 900s >"$WORK/idle-a.log" 2>&1 &
PIDS+=($!)
wait_metric_ge "$MA" derp_current_connections "" "$CLIENTS"

start_node b "$PB" "$MB"; wait_port "$PB"; t0=$(now_ms); PID_B=$LAST
wait_metric_ge "$MB" derp_mesh_link_keys "127.0.0.1:$PA" "$CLIENTS"; t1=$(now_ms)
echo "| join: B starts; knows all of A's clients after | $((t1 - t0)) |"

"$LT" idle --url "http://127.0.0.1:$PB/derp" --conns "$CLIENTS" --hold 900s >"$WORK/idle-b.log" 2>&1 &
PIDS+=($!)
wait_metric_ge "$MB" derp_current_connections "" "$CLIENTS"; t2=$(now_ms)
wait_metric_ge "$MA" derp_mesh_link_keys "127.0.0.1:$PB" "$CLIENTS"; t3=$(now_ms)
echo "| churn: $CLIENTS clients connect to B; A knows them all after B counts them | $((t3 - t2)) |"

kill -9 "$PID_B"; wait "$PID_B" 2>/dev/null || true
start_node b "$PB" "$MB"; wait_port "$PB"; t4=$(now_ms)
wait_metric_ge "$MB" derp_mesh_link_keys "127.0.0.1:$PA" "$CLIENTS"; t5=$(now_ms)
echo "| restart: B killed (SIGKILL) and restarted; knows all of A's clients again after | $((t5 - t4)) |"
