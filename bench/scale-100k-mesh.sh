#!/usr/bin/env bash
# 100 000 simulated clients over six of our relays, meshed (plain HTTP links), one machine:
# the bench/results/scale-100k run with --mesh-with and the `mesh` scenario, so half the pairs
# (FRACTION) straddle two relays and every one of their packets crosses a mesh link.
#   six `derper -a 127.0.0.1:3350..3355 --mesh-allow-plain --mesh-psk-file F --mesh-with <all six>`
#   loadtest mesh --pairs 50000 --workers 6 --source-ips 127.0.1.1-127.0.1.32 --rate 0.2
#     --size 200 --duration 20s --setup-timeout 5m --same-node-fraction $FRACTION
# Each relay holds ~16 700 clients plus 10 mesh connections (5 out, 5 in), under the 20 000
# open-file cap. Records wall time, peak RSS (VmHWM) of every relay, the largest loadtest
# worker RSS seen (sampled each second) and each relay's /metrics at the end.
# Usage: FRACTION=0.5 bench/scale-100k-mesh.sh      results: bench/results/scale-100k-mesh/
#        MESH=0 bench/scale-100k-mesh.sh   the same six relays unmeshed and `loadtest pairs`
#                                          (the original scale-100k run, as a same-day control)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
FRACTION=${FRACTION:-0.5}
MESH=${MESH:-1}
PAIRS=${PAIRS:-50000}
OUT=$REPO/bench/results/scale-100k-mesh
TAG=${TAG:-f$FRACTION}
[ "$MESH" = 0 ] && TAG=unmeshed
WORK=$REPO/bench/work/scale-100k-mesh-$TAG
mkdir -p "$OUT" "$WORK"
(cd "$REPO" && cargo build --release -q -p derper -p loadtest)
OURS=$REPO/target/release/derper
LT=$REPO/target/release/loadtest
printf '%064x\n' 0 | tr 0 5 >"$WORK/mesh.psk"
chmod 600 "$WORK/mesh.psk"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
URLS=$(for i in 0 1 2 3 4 5; do printf 'http://127.0.0.1:%d/derp,' $((3350 + i)); done)
URLS=${URLS%,}
MESH_ARGS=(--mesh-allow-plain --mesh-psk-file "$WORK/mesh.psk" --mesh-with "$URLS")
[ "$MESH" = 0 ] && MESH_ARGS=()
for i in 0 1 2 3 4 5; do
  "$OURS" -a "127.0.0.1:$((3350 + i))" -c "$WORK/relay$i.key" -http-port -1 -stun=false \
    --metrics-addr "127.0.0.1:$((3360 + i))" \
    "${MESH_ARGS[@]}" >"$WORK/relay$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2 3 4 5; do
  for _ in $(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/$((3350 + i))") 2>/dev/null && break; sleep 0.01; done
done
# Every relay has its five links up before the clients come.
for i in $([ "$MESH" = 0 ] || echo 0 1 2 3 4 5); do
  for _ in $(seq 500); do
    up=$(curl -s "http://127.0.0.1:$((3360 + i))/metrics" | grep -c '^derp_mesh_link_up{.*} 1' || true)
    [ "${up:-0}" -ge 5 ] && break
    sleep 0.02
  done
  echo "relay $i: $up mesh links up" >&2
done

SCEN=mesh
[ "$MESH" = 0 ] && SCEN=pairs
CMD=($SCEN --url "$URLS" --pairs "$PAIRS" --workers 6 --source-ips 127.0.1.1-127.0.1.32
  --rate 0.2 --size 200 --duration 20s --setup-timeout 5m
  --json "$OUT/mesh-100k-six-relays-$TAG.json")
[ "$MESH" = 0 ] || CMD+=(--same-node-fraction "$FRACTION")
echo "loadtest ${CMD[*]}" >"$OUT/mesh-100k-six-relays-$TAG.cmd"
t0=$(date +%s%3N)
"$LT" "${CMD[@]}" >"$OUT/mesh-100k-six-relays-$TAG.txt" 2>&1 &
LTPID=$!
maxw=0
while kill -0 "$LTPID" 2>/dev/null; do
  for r in $(ps --ppid "$LTPID" -o rss= 2>/dev/null); do [ "$r" -gt "$maxw" ] && maxw=$r; done
  sleep 1
done
rc=0; wait "$LTPID" || rc=$?
t1=$(date +%s%3N)
{
  echo "loadtest exit status: $rc"
  echo "wall time of the loadtest: $(( (t1 - t0) / 1000 )).$(( (t1 - t0) % 1000 / 100 )) s"
  echo "largest loadtest worker RSS seen: $((maxw / 1024)) MB"
  for i in 0 1 2 3 4 5; do
    echo "relay $i: peak RSS $(awk '/VmHWM/ {print int($2/1024)}' "/proc/${PIDS[$i]}/status") MB," \
      "CPU $(sed 's/.*) //' "/proc/${PIDS[$i]}/stat" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($12 + $13) / hz}') s"
  done
} | tee "$OUT/mesh-100k-six-relays-$TAG.resources"
for i in 0 1 2 3 4 5; do
  curl -s "http://127.0.0.1:$((3360 + i))/metrics" >"$OUT/mesh-100k-six-relays-$TAG.relay$i.metrics" || true
done
for i in 0 1 2 3 4 5; do
  kill -0 "${PIDS[$i]}" 2>/dev/null || echo "relay $i exited during the run" | tee -a "$OUT/mesh-100k-six-relays-$TAG.resources"
done
