#!/usr/bin/env bash
# STUN binding responses/s on loopback, in one run: our stunner (batched recvmmsg/sendmmsg loop,
# and the plain one-datagram loop), Tailscale's derper (-stun-port, pinned release) and coturn
# (turnserver --stun-only), and our derper's own STUN listener. Prints a markdown table with
# ratios against Tailscale's derper.
#
#   bash bench/stun/run.sh                       # 3 interleaved rounds of 5 s per server
#   ROUNDS=5 DURATION=10 bash bench/stun/run.sh --out bench/results/stun-$(date +%F).md
#
# Method: each server is pinned to CPU $SERVER_CPU (default 0) and the load client
# (stunner/examples/stun-load.rs) to CPU $CLIENT_CPU (default 1). The client runs open loop
# ($MODE=open: sendmmsg batches of 64 Tailscale requests as fast as it can, responses drained
# with recvmmsg between batches) so a server that keeps up with the client sees all of them;
# MODE=closed WINDOW=32 keeps a fixed number in flight instead. Per server it records responses
# per second and the server's CPU time per response (utime+stime from /proc, so a busy machine
# slows every server but barely moves this figure). Rounds are interleaved; medians reported.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SOCKETS=${SOCKETS:-1}
MODE=${MODE:-open}
WINDOW=${WINDOW:-32}
OUT=""
if [[ "${1:-}" == "--out" ]]; then OUT=${2:?--out FILE}; fi

log() { echo "$@" >&2; }

cargo build -q --release -p stunner --bins --examples
cargo build -q --release -p derper
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
STUNNER="$target_dir/release/stunner"
LOAD="$target_dir/release/examples/stun-load"
OUR_DERPER="$target_dir/release/derper"

# DERPER_STUN: Tailscale's derper to compare with (bench/run.sh passes its newest release).
DERPER=${DERPER_STUN:-$(scripts/install-go-tools.sh --print-derper 2>/dev/null || true)}
if [[ ! -x "$DERPER" ]]; then
    DERPER=$(command -v derper || echo "$HOME/go/bin/derper")
fi
[[ -x "$DERPER" ]] || { log "no derper: run scripts/install-go-tools.sh"; exit 1; }

if ! command -v turnserver >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing coturn ..."
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn; } >/dev/null 2>&1 || true
    fi
fi
# ours-derper: our relay's co-located STUN (`derper --stun-port`), the like-for-like row
# against Tailscale's derper.
servers=(ours-derper stunner stunner-batch1 derper)
command -v turnserver >/dev/null && servers+=(coturn) || log "coturn not installed: skipping it"

work=$(mktemp -d)
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)

# run_one NAME: starts the server, loads it, prints "rps cpu_us_per_response".
run_one() {
    local name=$1 port http
    port=$(free_port)
    case $name in
    stunner) cmd=("$STUNNER" --listen "127.0.0.1:$port") ;;
    ours-derper)
        http=$(free_port)
        cmd=("$OUR_DERPER" -a "127.0.0.1:$http" -c "$work/ours.key" --http-port -1 --stun-port "$port")
        ;;
    stunner-batch1) cmd=("$STUNNER" --listen "127.0.0.1:$port" --batch 1) ;;
    derper)
        http=$(free_port)
        cmd=("$DERPER" -a "127.0.0.1:$http" -c "$work/derper.key" -http-port -1 -stun-port "$port")
        ;;
    coturn)
        cmd=(turnserver -n --stun-only --no-cli --no-tls --no-dtls -L 127.0.0.1 -p "$port"
            --log-file stdout --pidfile "$work/turn.pid")
        ;;
    esac
    taskset -c "$SERVER_CPU" "${cmd[@]}" >"$work/$name.log" 2>&1 &
    server_pid=$!
    # Warm up and wait until it answers.
    for _ in $(seq 50); do
        if "$LOAD" --target "127.0.0.1:$port" --duration 0.2 --warmup 0 --window 1 2>/dev/null |
            grep -q 'RESULT rps=[1-9]'; then break; fi
    done
    local c0 c1 result
    c0=$(cpu_ticks "$server_pid")
    local mode_args=(--open)
    [[ $MODE == closed ]] && mode_args=(--window "$WINDOW")
    result=$(taskset -c "$CLIENT_CPU" "$LOAD" --target "127.0.0.1:$port" --duration "$DURATION" \
        --warmup 0 --sockets "$SOCKETS" "${mode_args[@]}" | grep RESULT)
    c1=$(cpu_ticks "$server_pid")
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    local rps ok
    rps=$(sed -E 's/.*rps=([0-9]+).*/\1/' <<<"$result")
    ok=$(sed -E 's/.* ok=([0-9]+).*/\1/' <<<"$result")
    awk -v t=$((c1 - c0)) -v hz="$clk_tck" -v ok="$ok" -v rps="$rps" \
        'BEGIN { printf "%d %.2f %.0f\n", rps, (ok > 0 ? t / hz * 1e6 / ok : 0), t / hz * 100 / '"$DURATION"' }'
}

declare -A results
for round in $(seq "$ROUNDS"); do
    for name in "${servers[@]}"; do
        r=$(run_one "$name")
        log "round $round: $name: $r  (responses/s, server CPU us/response, server CPU %)"
        results[$name]+="$r"$'\n'
    done
done

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else print a[int((NR + 1) / 2)] }'; }
declare -A rps cpu util
for name in "${servers[@]}"; do
    rps[$name]=$(awk 'NF { print $1 }' <<<"${results[$name]}" | median)
    cpu[$name]=$(awk 'NF { print $2 }' <<<"${results[$name]}" | median)
    util[$name]=$(awk 'NF { print $3 }' <<<"${results[$name]}" | median)
done

{
    echo "## STUN binding responses, loopback ($(date -u +%F), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
    echo
    window_env=""
    [[ $MODE == closed ]] && window_env="WINDOW=$WINDOW "
    echo "Command: \`ROUNDS=$ROUNDS DURATION=$DURATION MODE=$MODE ${window_env}SOCKETS=$SOCKETS bash bench/stun/run.sh\`"
    echo "(server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU; medians of $ROUNDS interleaved rounds of ${DURATION}s)"
    echo
    echo "| server | responses/s | vs derper | server CPU µs/response | vs derper | server CPU % |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in "${servers[@]}"; do
        awk -v n="$name" -v r="${rps[$name]}" -v c="${cpu[$name]}" -v u="${util[$name]}" \
            -v dr="${rps[derper]}" -v dc="${cpu[derper]}" \
            'BEGIN { printf "| %s | %d | %.2fx | %.2f | %.2fx | %d |\n", n, r, (dr > 0 ? r / dr : 0), c, (c > 0 ? dc / c : 0), u }'
    done
    echo
    echo "\"vs derper\" is higher-is-better in both columns (CPU: derper's µs/response divided by ours)."
    echo "stunner = batched recvmmsg/sendmmsg loop (default, batch 32); stunner-batch1 = one recv_from/send_to per datagram."
} | tee "${OUT:-/dev/null}"
