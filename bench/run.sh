#!/usr/bin/env bash
# Side-by-side benchmark, three ways: ours, Tailscale's newest derper (v1.104.7) and the interop
# pin (v1.102.5), on this machine, with the same flags and the same `loadtest` workloads, in the
# same run (a fresh server per case, the order rotating from case to case). Prints ratios
# (ours / each Go release); the machine is shared and noisy, so only ratios from one run mean
# anything (design.md §7).
#
# Usage: bench/run.sh [scenario...]
#   scenarios: tput tls latency sweep idle storm burst flood stun
#              (default: tput tls latency sweep idle storm stun)
#   sweep: open loop at SWEEP_PCTS % of OUR closed-loop peak (1 300 B plain, from tput), the
#   same offered rates for every server: delivered vs offered, loss, per-pair fairness; drawn
#   as overload.svg next to the table (bench/overload_plot.py).
#   stun: bench/stun/run.sh (stunner vs derper's STUN; CPU per response) into stun.md.
#   tput also measures the physical ceiling (design.md §7): a bare TCP forwarder on this box
#   (loadtest/examples/tcp_forwarder.rs, Rust/tokio, no DERP logic) with the same PAIRS, at
#   100 B, 1 300 B and 64 KiB writes. Every case records the server's CPU time (utime + stime
#   from /proc/<pid>/stat, before and after the loadtest) for "server CPU s/GB" rows.
# Environment:
#   PAIRS=8 DURATION=5s WINDOW=64 throughput and latency workload (WINDOW: packets in flight
#                                 per sender in the closed-loop peak runs)
#   IDLE_CONNS="5000 19000"       idle connection counts (19 000 is one process's cap here)
#   STORM_CLIENTS=2000 STORM_ROUNDS=2
#   BURSTS="64 256" BURST_COUNT=20 BURST_SIZE=1200 BURST_TIMEOUT=1s
#   FLOODERS="2 4 8" FLOOD_RATES="200 1000" FLOOD_DURATION=5s
#   SWEEP_PCTS="100 150 300"      offered load of the sweep, % of our peak
#   STUN_ROUNDS=3 STUN_SOCKETS=4  the stun scenario's rounds and client sockets
#   DERPER_NEW=v1.104.7 DERPER_OLD=v1.102.5    the Tailscale releases (installed into
#                                 .tools/bench by scripts/install-bench-derpers.sh)
#   TAILSCALE_DERPER_NEW=/path TAILSCALE_DERPER_OLD=/path   use these binaries instead
# Results: bench/results/<UTC timestamp>/{*.json,summary.md}, and bench/results/latest.md.
# File names: NAME.<server>.json with server = ours, go-v1_104_7, go-v1_102_5.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
NEW=${DERPER_NEW:-v1.104.7}
OLD=${DERPER_OLD:-v1.102.5}
PAIRS=${PAIRS:-8}
WINDOW=${WINDOW:-64}
DURATION=${DURATION:-5s}
IDLE_CONNS=${IDLE_CONNS:-"5000 19000"}
STORM_CLIENTS=${STORM_CLIENTS:-2000}
STORM_ROUNDS=${STORM_ROUNDS:-2}
BURSTS=${BURSTS:-"64 256"}
BURST_COUNT=${BURST_COUNT:-20}
BURST_SIZE=${BURST_SIZE:-1200}
BURST_TIMEOUT=${BURST_TIMEOUT:-1s}
FLOODERS=${FLOODERS:-"2 4 8"}
FLOOD_RATES=${FLOOD_RATES:-"200 1000"}
FLOOD_DURATION=${FLOOD_DURATION:-5s}
SWEEP_PCTS=${SWEEP_PCTS:-"100 150 300"}
STUN_ROUNDS=${STUN_ROUNDS:-3}
STUN_SOCKETS=${STUN_SOCKETS:-4}
SCENARIOS=${*:-tput tls latency sweep idle storm stun}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$REPO/bench/results/$STAMP
WORK=$REPO/bench/work/$STAMP
mkdir -p "$OUT" "$WORK"

log() { printf '[bench] %s\n' "$*" >&2; }

# --- binaries -------------------------------------------------------------------------------
# Server labels (file names) and binaries: ours first, then the Go releases, newest first.
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
(cd "$REPO" && cargo build --release -q -p derper -p loadtest \
  && cargo build --release -q -p loadtest --example tcp_forwarder)
FWD=$REPO/target/release/examples/tcp_forwarder
CLK_TCK=$(getconf CLK_TCK)
OURS=$REPO/target/release/derper
LT=$REPO/target/release/loadtest
GO_NEW_VERSION=$("$GO_NEW" -version 2>&1 | head -1)
GO_OLD_VERSION=$("$GO_OLD" -version 2>&1 | head -1)
OUR_COMMIT=$(git -C "$REPO" rev-parse --short HEAD)
SERVERS=(ours "$GO_NEW_LABEL" "$GO_OLD_LABEL")
declare -A BIN=([ours]=$OURS [$GO_NEW_LABEL]=$GO_NEW [$GO_OLD_LABEL]=$GO_OLD)
log "servers: ours ($OUR_COMMIT), $GO_NEW_LABEL ($GO_NEW_VERSION), $GO_OLD_LABEL ($GO_OLD_VERSION)"

# --- servers --------------------------------------------------------------------------------
PID=
# stop_server [NOTE_FILE]: stops the server; if it had already exited on its own (crash, OOM
# kill, someone else's kill), says so on stderr and in NOTE_FILE.
stop_server() {
  if [ -n "$PID" ]; then
    local rc=0
    if kill "$PID" 2>/dev/null; then
      wait "$PID" 2>/dev/null || true
    else
      wait "$PID" 2>/dev/null || rc=$?
      log "server pid $PID had already exited (status $rc) before the end of the case"
      [ -n "${1:-}" ] && echo "server exited on its own during the case, status $rc" >"$1"
    fi
    PID=
  fi
}
trap stop_server EXIT

# start_server LABEL plain|tls PORT: same flags for every server; sets PID and URL.
start_server() {
  local which=$1 mode=$2 port=$3 bin
  bin=${BIN[$which]}
  local args=(-a "127.0.0.1:$port" -c "$WORK/$which.key" -http-port -1 -stun=false)
  if [ "$mode" = tls ]; then
    mkdir -p "$WORK/certs-$which"
    args+=(-certmode manual -certdir "$WORK/certs-$which" -hostname 127.0.0.1)
    URL=https://127.0.0.1:$port/derp
  else
    URL=http://127.0.0.1:$port/derp
  fi
  "$bin" "${args[@]}" >"$WORK/$which-$mode-$port.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  log "$which derper did not start; see $WORK/$which-$mode-$port.log"
  return 1
}

# cpu_ticks PID: utime + stime of the whole process (all threads), in clock ticks.
cpu_ticks() {
  sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0
}

# child_ticks: CPU of this shell's reaped children (cutime + cstime), in clock ticks; the
# loadtest runs under `timeout`, which waits for it, so the difference around a case is the
# load client's CPU (the server is reaped only after the case).
child_ticks() {
  sed 's/.*) //' "/proc/$$/stat" | awk '{print $14 + $15}'
}

# A random base, so two runs at once (other sessions on this box) do not fight over ports.
PORT=${BENCH_PORT_BASE:-$((20000 + RANDOM % 20000))}
# run_case NAME LABEL plain|tls loadtest-args...: fresh server per case, JSON to $OUT.
run_case() {
  local name=$1 which=$2 mode=$3
  shift 3
  PORT=$((PORT + 1))
  start_server "$which" "$mode" "$PORT" || return 0
  local extra=()
  [ "$mode" = tls ] && extra+=(--insecure)
  local args=("$@")
  # @PID@ stands for the server's pid (idle memory).
  args=("${args[@]//@PID@/$PID}")
  log "$name / $which: loadtest ${args[*]} --url $URL"
  local cpu0 client0
  cpu0=$(cpu_ticks "$PID")
  client0=$(child_ticks)
  timeout 600 "$LT" "${args[@]}" --url "$URL" "${extra[@]}" --max-errors 1000000000 \
    --json "$OUT/$name.$which.json" >"$OUT/$name.$which.txt" 2>&1 || log "$name/$which exited $?"
  # Server and load-client CPU during the case: "ticks_before ticks_after CLK_TCK".
  echo "$cpu0 $(cpu_ticks "$PID") $CLK_TCK" >"$OUT/$name.$which.cpu"
  echo "$client0 $(child_ticks) $CLK_TCK" >"$OUT/$name.$which.clientcpu"
  stop_server "$OUT/$name.$which.died"
}

# run_ceiling SIZE: bare TCP forwarder, PAIRS pairs, SIZE-byte writes, open loop, for DURATION;
# report to $OUT/ceiling-SIZE.fwd.json, forwarder CPU to $OUT/ceiling-SIZE.fwd.cpu.
run_ceiling() {
  local size=$1 secs
  secs=$(python3 -c "import re; d='$DURATION'; m=re.fullmatch(r'([0-9.]+)(ms|s|m)?', d); \
v=float(m[1]); print(v/1000 if m[2]=='ms' else v*60 if m[2]=='m' else v)")
  PORT=$((PORT + 1))
  "$FWD" serve "127.0.0.1:$PORT" >"$WORK/fwd-$PORT.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.05
  done
  log "ceiling-$size: tcp_forwarder drive, $PAIRS pairs, $size-byte writes, ${secs}s"
  local cpu0
  cpu0=$(cpu_ticks "$PID")
  timeout 120 "$FWD" drive "127.0.0.1:$PORT" "$PAIRS" "$size" "$secs" "$OUT/ceiling-$size.fwd.json" \
    >"$OUT/ceiling-$size.fwd.txt" 2>&1 || log "ceiling-$size exited $?"
  echo "$cpu0 $(cpu_ticks "$PID") $CLK_TCK" >"$OUT/ceiling-$size.fwd.cpu"
  stop_server
}

# open_loop_at PREFIX SERVER "PCTS": 1 300-byte plain pairs, open loop at each PCT % of SERVER's
# closed-loop peak (tput-1300-plain), split evenly over the 2 x PAIRS senders; cases PREFIX-PCT.
open_loop_at() {
  local prefix=$1 server=$2 pcts=$3 peak pct rate
  peak=$(jq -r '.traffic.packets_per_sec' "$OUT/tput-1300-plain.$server.json" 2>/dev/null || echo 0)
  if ! [ "${peak%.*}" -gt 0 ] 2>/dev/null; then
    log "$prefix: needs the tput scenario first"
    return
  fi
  for pct in $pcts; do
    rate=$(python3 -c "print(max(1.0, $peak * $pct / 100 / (2 * $PAIRS)))")
    all "$prefix-$pct" plain pairs --pairs "$PAIRS" --size 1300 --rate "$rate" --duration "$DURATION"
  done
}

CASES=0
# Every server, the order rotating from case to case so none always gets the cooler machine.
all() {
  local name=$1 k i
  shift
  for k in 0 1 2; do
    i=$(((CASES + k) % 3))
    run_case "$name" "${SERVERS[$i]}" "$@"
  done
  CASES=$((CASES + 1))
}

for s in $SCENARIOS; do
  case $s in
    tput)
      # Physical ceiling first: the same PAIRS through a bare TCP forwarder.
      for size in 100 1300 65536; do run_ceiling "$size"; done
      # Peak: closed loop, at most $WINDOW packets in flight per sender, so the relay is busy
      # but not drowning. Overload: open loop, senders write as fast as they can.
      all tput-1300-plain plain pairs --pairs "$PAIRS" --size 1300 --max --window "$WINDOW" --duration "$DURATION"
      all tput-100-plain plain pairs --pairs "$PAIRS" --size 100 --max --window "$WINDOW" --duration "$DURATION"
      all overload-1300-plain plain pairs --pairs "$PAIRS" --size 1300 --max --duration "$DURATION"
      all overload-100-plain plain pairs --pairs "$PAIRS" --size 100 --max --duration "$DURATION"
      ;;
    tls)
      all tput-1300-tls tls pairs --pairs "$PAIRS" --size 1300 --max --window "$WINDOW" --duration "$DURATION"
      all tput-100-tls tls pairs --pairs "$PAIRS" --size 100 --max --window "$WINDOW" --duration "$DURATION"
      ;;
    latency)
      # Offered load at 50 % and 150 % of the newest Go derper's measured peak.
      open_loop_at latency "$GO_NEW_LABEL" "50 150"
      ;;
    sweep)
      # SWEEP_PCTS % of our own closed-loop peak. The same offered rates for every server, so
      # the plot compares how each copes with the same push; the client reports what it
      # actually offered.
      open_loop_at sweep-1300 ours "$SWEEP_PCTS"
      ;;
    stun)
      log "stun: bench/stun/run.sh (ROUNDS=$STUN_ROUNDS SOCKETS=$STUN_SOCKETS)"
      DERPER_STUN=$GO_NEW ROUNDS=$STUN_ROUNDS SOCKETS=$STUN_SOCKETS DURATION=5 \
        bash "$REPO/bench/stun/run.sh" --out "$OUT/stun.md" >"$WORK/stun.log" 2>&1 \
        || log "stun exited $?; see $WORK/stun.log"
      ;;
    idle)
      for n in $IDLE_CONNS; do
        # One loadtest process (19 000 sockets fit under its 20 000-file cap), so the server's
        # RSS is read once before and once after every connection is up.
        all "idle-$n-plain" plain idle --conns "$n" --hold 2s --server-pid @PID@ \
          --source-ips 127.0.1.1-127.0.1.8
        all "idle-$n-tls" tls idle --conns "$n" --hold 2s --server-pid @PID@ \
          --source-ips 127.0.1.1-127.0.1.8
      done
      ;;
    storm)
      all storm-plain plain storm --clients "$STORM_CLIENTS" --rounds "$STORM_ROUNDS" \
        --source-ips 127.0.2.1-127.0.2.8
      all storm-tls tls storm --clients "$STORM_CLIENTS" --rounds "$STORM_ROUNDS" \
        --source-ips 127.0.2.1-127.0.2.8
      ;;
    burst)
      # One sender, one receiver; every burst of N SendPackets in one write.
      for n in $BURSTS; do
        all "burst-$n" plain burst --burst "$n" --bursts "$BURST_COUNT" --size "$BURST_SIZE" \
          --burst-timeout "$BURST_TIMEOUT"
      done
      ;;
    flood)
      # N non-reading flooders against a canary pair at R packets/s.
      for f in $FLOODERS; do
        for r in $FLOOD_RATES; do
          all "flood-$f-$r" plain flood --flooders "$f" --rate "$r" --duration "$FLOOD_DURATION"
        done
      done
      ;;
    *) log "unknown scenario $s"; exit 2 ;;
  esac
done

CMD="PAIRS=$PAIRS DURATION=$DURATION WINDOW=$WINDOW IDLE_CONNS=\"$IDLE_CONNS\""
case " $SCENARIOS " in *" sweep "*) CMD+=" SWEEP_PCTS=\"$SWEEP_PCTS\"" ;; esac
case " $SCENARIOS " in *" stun "*) CMD+=" STUN_ROUNDS=$STUN_ROUNDS STUN_SOCKETS=$STUN_SOCKETS" ;; esac
case " $SCENARIOS " in *" storm "*) CMD+=" STORM_CLIENTS=$STORM_CLIENTS STORM_ROUNDS=$STORM_ROUNDS" ;; esac
case " $SCENARIOS " in *" burst "*) CMD+=" BURSTS=\"$BURSTS\" BURST_COUNT=$BURST_COUNT BURST_SIZE=$BURST_SIZE BURST_TIMEOUT=$BURST_TIMEOUT" ;; esac
case " $SCENARIOS " in *" flood "*) CMD+=" FLOODERS=\"$FLOODERS\" FLOOD_RATES=\"$FLOOD_RATES\" FLOOD_DURATION=$FLOOD_DURATION" ;; esac
python3 "$REPO/bench/table.py" "$OUT" "$OUR_COMMIT" "$CMD bench/run.sh $SCENARIOS" \
  "$GO_NEW_LABEL=$GO_NEW_VERSION" "$GO_OLD_LABEL=$GO_OLD_VERSION" | tee "$OUT/summary.md"
python3 "$REPO/bench/overload_plot.py" "$OUT" "$OUT/overload.svg" || log "no overload plot"
cp "$OUT/summary.md" "$REPO/bench/results/latest.md"
log "results in $OUT"
