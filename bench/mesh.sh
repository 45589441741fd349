#!/usr/bin/env bash
# Mesh benchmark, three ways: a region of two relays meshed over TLS, ours against Tailscale's
# newest derper (v1.104.7) and the interop pin (v1.102.5), same flags, same `loadtest mesh`
# workloads, in one run (a fresh region per case, the order rotating from case to case), as
# bench/run.sh does for one relay.
#
# Every region: a throwaway CA whose leaf names `localhost` and 127.0.0.1 (openssl), both nodes
# `-a 127.0.0.1:P -hostname localhost -certmode manual -certdir D -mesh-psk-file F
# -mesh-with localhost:P0,localhost:P1 -http-port -1 -stun=false`, with SSL_CERT_FILE=CA (and
# an empty SSL_CERT_DIR) so each node verifies its peer against that CA only: how Tailscale's
# derper meshes in production (tests/go/mesh_test.go). Go's derper refuses any SNI but its
# hostname, so every URL says `localhost`. Go retries a failed mesh dial only every 5 s, so
# each case first waits until a small `loadtest mesh` (2 cross-node pairs, both directions)
# passes; that wait is recorded (NAME.SERVER.meshwait, ms) and is not in the measurement.
#
# Usage: bench/mesh.sh [scenario...]      (default: rate peak restart)
#   rate     open loop at a modest fixed rate, half the pairs same-node, half cross-node:
#            p50 / p99 / loss per class.
#   peak     closed loop (--max --window), --same-node-fraction 0.5, 1 and 0: packets/s per
#            class and delivered packets per server CPU second (both nodes' utime + stime from
#            /proc/<pid>/stat around the loadtest) = packets/s per fully busy core.
#   restart  node 1 is killed (SIGKILL) and started again; time from it accepting connections
#            until a 1-pair cross-node `loadtest mesh` (route probes every 50 ms, both ways)
#            passes, RESTARTS times per server; the same command on a healthy region is the
#            baseline (process start, handshakes, one packet each way).
# Environment:
#   RATE_PAIRS=16 RATE=1000 RATE_DURATION=10s    fixed-rate workload (packets/s per sender)
#   PEAK_PAIRS=8 WINDOW=64 PEAK_DURATION=10s      closed-loop workload
#   SIZE=1280 FRACTION=0.5 RESTARTS=3
#   DERPER_NEW=v1.104.7 DERPER_OLD=v1.102.5 TAILSCALE_DERPER_NEW=/path TAILSCALE_DERPER_OLD=/path
# Results: bench/results/<UTC timestamp>-mesh/{*.json,*.cpu,restart.tsv,summary.md}.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
NEW=${DERPER_NEW:-v1.104.7}
OLD=${DERPER_OLD:-v1.102.5}
RATE_PAIRS=${RATE_PAIRS:-16}
RATE=${RATE:-1000}
RATE_DURATION=${RATE_DURATION:-10s}
PEAK_PAIRS=${PEAK_PAIRS:-8}
WINDOW=${WINDOW:-64}
PEAK_DURATION=${PEAK_DURATION:-10s}
SIZE=${SIZE:-1280}
FRACTION=${FRACTION:-0.5}
RESTARTS=${RESTARTS:-3}
SCENARIOS=${*:-rate peak restart}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$REPO/bench/results/$STAMP-mesh
WORK=$REPO/bench/work/$STAMP-mesh
mkdir -p "$OUT" "$WORK"

log() { printf '[mesh-bench] %s\n' "$*" >&2; }

# --- binaries (as bench/run.sh) ---------------------------------------------------------------
label_of() { local v=${1//./_}; echo "go-$v"; }
GO_NEW_LABEL=$(label_of "$NEW")
GO_OLD_LABEL=$(label_of "$OLD")
if [ -z "${TAILSCALE_DERPER_NEW:-}" ] || [ -z "${TAILSCALE_DERPER_OLD:-}" ]; then
  log "installing / checking Tailscale derper $NEW and $OLD (scripts/install-bench-derpers.sh)"
  BENCH_DERPER_NEW=$NEW BENCH_DERPER_OLD=$OLD "$REPO/scripts/install-bench-derpers.sh" >/dev/null
fi
GO_NEW=${TAILSCALE_DERPER_NEW:-$REPO/.tools/bench/derper-$NEW}
GO_OLD=${TAILSCALE_DERPER_OLD:-$REPO/.tools/bench/derper-$OLD}
log "building our derper and loadtest (release)"
(cd "$REPO" && cargo build --release -q -p derper -p loadtest)
CLK_TCK=$(getconf CLK_TCK)
OURS=$REPO/target/release/derper
LT=$REPO/target/release/loadtest
GO_NEW_VERSION=$("$GO_NEW" -version 2>&1 | head -1)
GO_OLD_VERSION=$("$GO_OLD" -version 2>&1 | head -1)
OUR_COMMIT=$(git -C "$REPO" rev-parse --short HEAD)
SERVERS=(ours "$GO_NEW_LABEL" "$GO_OLD_LABEL")
declare -A BIN=([ours]=$OURS [$GO_NEW_LABEL]=$GO_NEW [$GO_OLD_LABEL]=$GO_OLD)
log "servers: ours ($OUR_COMMIT), $GO_NEW_LABEL ($GO_NEW_VERSION), $GO_OLD_LABEL ($GO_OLD_VERSION)"

# --- the region's CA, leaf for localhost, mesh key ---------------------------------------------
CA=$WORK/ca.pem
mkdir -p "$WORK/certs" "$WORK/empty"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/ca.key" \
  -out "$CA" -days 2 -subj "/CN=bench mesh CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/certs/localhost.key" \
  -out "$WORK/leaf.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' \
  >"$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$CA" -CAkey "$WORK/ca.key" -CAcreateserial \
  -out "$WORK/certs/localhost.crt" -days 2 -extfile "$WORK/leaf.ext" 2>/dev/null
chmod 600 "$WORK/certs/localhost.key"
printf '%064x\n' 0 | tr 0 6 >"$WORK/mesh.psk"
chmod 600 "$WORK/mesh.psk"

# --- regions ------------------------------------------------------------------------------------
PIDS=()    # node pids of the current region, index = node
NODE_ARGS=()
stop_region() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_region EXIT

wait_port() { # PORT [tries of 5 ms]
  for _ in $(seq "${2:-2000}"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.005
  done
  return 1
}

# start_node I: node I of the current region ($WHICH, $P0/$P1), same flags for every server.
start_node() {
  local i=$1 port
  port=$([ "$i" = 0 ] && echo "$P0" || echo "$P1")
  SSL_CERT_FILE=$CA SSL_CERT_DIR=$WORK/empty "${BIN[$WHICH]}" -a "127.0.0.1:$port" \
    -c "$WORK/$WHICH-$i.key" -http-port -1 -stun=false \
    -certmode manual -hostname localhost -certdir "$WORK/certs" \
    -mesh-psk-file "$WORK/mesh.psk" -mesh-with "localhost:$P0,localhost:$P1" \
    >>"$WORK/$WHICH-$P0-node$i.log" 2>&1 &
  PIDS[$i]=$!
}

PORT=${BENCH_PORT_BASE:-$((20000 + RANDOM % 20000))}
# start_region LABEL: two fresh nodes on new ports; sets WHICH, P0, P1, URLS, PIDS.
start_region() {
  WHICH=$1
  P0=$((PORT + 1)) P1=$((PORT + 2))
  PORT=$((PORT + 2))
  URLS="https://localhost:$P0/derp,https://localhost:$P1/derp"
  start_node 0
  start_node 1
  wait_port "$P0" && wait_port "$P1" || { log "$WHICH did not start; see $WORK"; return 1; }
}

# probe_once: 1 cross-node pair (node 0 <-> node 1), route probes both ways, one packet each way.
probe_once() {
  timeout 30 "$LT" mesh --url "$URLS" --insecure --same-node-fraction 0 --pairs "${1:-1}" \
    --rate 20 --duration 1ms --drain 1s >/dev/null 2>&1
}

# wait_meshed FILE: until a 2-pair cross-node run passes (both directions); ms to FILE.
wait_meshed() {
  local t0 t1
  t0=$(date +%s%3N)
  for _ in $(seq 12); do
    if probe_once 2; then
      t1=$(date +%s%3N)
      echo $((t1 - t0)) >"$1"
      return 0
    fi
  done
  log "$WHICH region never meshed (60 s)"
  echo fail >"$1"
  return 1
}

cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }
region_ticks() { echo $(($(cpu_ticks "${PIDS[0]}") + $(cpu_ticks "${PIDS[1]}"))); }

# run_case NAME LABEL loadtest-mesh-args...: fresh meshed region per case, JSON to $OUT.
run_case() {
  local name=$1 which=$2
  shift 2
  start_region "$which" || return 0
  wait_meshed "$OUT/$name.$which.meshwait" || { stop_region; return 0; }
  log "$name / $which: loadtest mesh $* --url $URLS --insecure"
  echo "loadtest mesh $* --url $URLS --insecure" >"$OUT/$name.$which.cmd"
  local cpu0
  cpu0=$(region_ticks)
  timeout 600 "$LT" mesh "$@" --url "$URLS" --insecure --max-errors 1000000000 \
    --json "$OUT/$name.$which.json" >"$OUT/$name.$which.txt" 2>&1 || log "$name/$which exited $?"
  echo "$cpu0 $(region_ticks) $CLK_TCK" >"$OUT/$name.$which.cpu"
  local i
  for i in 0 1; do
    kill -0 "${PIDS[$i]}" 2>/dev/null || echo "node $i exited during the case" >>"$OUT/$name.$which.died"
  done
  stop_region
}

CASES=0
all() {
  local name=$1 k i
  shift
  for k in 0 1 2; do
    i=$(((CASES + k) % 3))
    run_case "$name" "${SERVERS[$i]}" "$@"
  done
  CASES=$((CASES + 1))
}

# restart_server LABEL: RESTARTS rounds of SIGKILL + start of node 1; rows to restart.tsv.
restart_server() {
  local which=$1 r t0 t1 tries b
  start_region "$which" || return 0
  wait_meshed "$OUT/restart.$which.meshwait" || { stop_region; return 0; }
  # Baseline: the measuring command on the healthy region.
  for r in 1 2 3; do
    t0=$(date +%s%3N); probe_once || true; t1=$(date +%s%3N)
    printf '%s\tbaseline\t%s\t%s\n' "$which" "$r" $((t1 - t0)) >>"$OUT/restart.tsv"
  done
  for r in $(seq "$RESTARTS"); do
    kill -9 "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
    start_node 1
    wait_port "$P1" 4000 || { log "$which node 1 did not come back"; break; }
    t0=$(date +%s%3N)
    tries=0
    until probe_once; do
      tries=$((tries + 1))
      [ $tries -ge 12 ] && break
    done
    t1=$(date +%s%3N)
    b=$([ $tries -ge 12 ] && echo fail || echo $((t1 - t0)))
    printf '%s\trestart\t%s\t%s\t%s\n' "$which" "$r" "$b" "$tries" >>"$OUT/restart.tsv"
    log "restart $which round $r: cross-node traffic after $b ms ($tries failed probe runs)"
    # Let the region settle (Go's other link, ours' backoff) before the next round.
    wait_meshed "$OUT/restart.$which.settle$r" || true
    sleep 1
  done
  stop_region
}

for s in $SCENARIOS; do
  case $s in
    rate)
      all "rate-$RATE_PAIRS-$RATE" --pairs "$RATE_PAIRS" --rate "$RATE" --size "$SIZE" \
        --duration "$RATE_DURATION" --same-node-fraction "$FRACTION"
      ;;
    peak)
      for f in "$FRACTION" 1 0; do
        all "peak-f$f" --pairs "$PEAK_PAIRS" --max --window "$WINDOW" --size "$SIZE" \
          --duration "$PEAK_DURATION" --same-node-fraction "$f"
      done
      ;;
    restart)
      for w in "${SERVERS[@]}"; do restart_server "$w"; done
      ;;
    *) log "unknown scenario $s"; exit 2 ;;
  esac
done

CMD="RATE_PAIRS=$RATE_PAIRS RATE=$RATE RATE_DURATION=$RATE_DURATION PEAK_PAIRS=$PEAK_PAIRS WINDOW=$WINDOW PEAK_DURATION=$PEAK_DURATION SIZE=$SIZE FRACTION=$FRACTION RESTARTS=$RESTARTS bench/mesh.sh $SCENARIOS"
python3 "$REPO/bench/mesh_table.py" "$OUT" "$OUR_COMMIT" "$CMD" \
  "$GO_NEW_LABEL=$GO_NEW_VERSION" "$GO_OLD_LABEL=$GO_OLD_VERSION" | tee "$OUT/summary.md"
log "results in $OUT"
