#!/usr/bin/env bash
# Mesh links under packet loss: TCP/TLS links against QUIC links, between two of our relays in
# network namespaces, with nftables dropping a random share of the mesh link's packets.
#
#   ns mla: relay A  (-a 0.0.0.0:8443, clients at 10.99.0.1, mesh address 10.99.0.4)
#           loadtest (all clients; to A locally, to B over the veth)
#   ns mlb: relay B  (-a 0.0.0.0:8443, clients at 10.99.0.2, mesh address 10.99.0.3)
#   veth mla:eth0 <-> mlb:eth0, 10.99.0.0/24
#
# A links to B at 10.99.0.3 and B to A at 10.99.0.4 (`--mesh-with` over TCP: https://IP:8443;
# over QUIC: quic://IP:8443 with --quic-port 8443), so the loss rules match only the mesh
# links, both directions of both (`numgen random mod 1000 < LOSS*10`), never a client's
# connection. Every pair straddles the relays (--same-node-fraction 0): every packet crosses a
# mesh link once.
#
# For each loss in LOSSES and transport in tcp quic (order alternating): a fresh region, wait
# until cross-node traffic flows, then `loadtest mesh` at a fixed rate; p50/p99/p99.9 delivery
# latency, loss and goodput from its JSON. Then, per transport, RESTARTS times: SIGKILL relay B
# and start it again (loss 0); the time from it accepting connections until a 1-pair
# cross-node probe passes both ways.
#
# Needs root, ip, nft, openssl; builds release binaries. Do not run while others build or
# benchmark: it saturates a core.
#
# Usage: bench/mesh-loss.sh
# Environment: LOSSES="0 1 5" PAIRS=16 RATE=250 SIZE=1280 DURATION=20s RESTARTS=3
#              DERPER=path LOADTEST=path (skip the release build, e.g. for a smoke run)
# Results: bench/results/<UTC timestamp>-mesh-loss/{*.json,*.txt,restart.tsv,summary.md}.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
LOSSES=${LOSSES:-0 1 5}
PAIRS=${PAIRS:-16}
RATE=${RATE:-250}
SIZE=${SIZE:-1280}
DURATION=${DURATION:-20s}
RESTARTS=${RESTARTS:-3}
PORT=8443
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$REPO/bench/results/$STAMP-mesh-loss
WORK=$REPO/bench/work/$STAMP-mesh-loss
NA=mla$$
NB=mlb$$
mkdir -p "$OUT" "$WORK"

log() { printf '[mesh-loss] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (network namespaces, nftables)"; exit 1; }

if [ -z "${DERPER:-}" ] || [ -z "${LOADTEST:-}" ]; then
  log "building our derper and loadtest (release)"
  (cd "$REPO" && cargo build --release -q -p derper -p loadtest)
fi
OURS=${DERPER:-$REPO/target/release/derper}
LT=${LOADTEST:-$REPO/target/release/loadtest}

# --- namespaces ---------------------------------------------------------------------------------
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NA" 2>/dev/null || true
  ip netns del "$NB" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NA"
ip netns add "$NB"
ip -n "$NA" link add eth0 type veth peer name eth0 netns "$NB"
ip -n "$NA" addr add 10.99.0.1/24 dev eth0
ip -n "$NA" addr add 10.99.0.4/24 dev eth0
ip -n "$NB" addr add 10.99.0.2/24 dev eth0
ip -n "$NB" addr add 10.99.0.3/24 dev eth0
for ns in "$NA" "$NB"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip netns exec "$ns" nft add table inet loss
  ip netns exec "$ns" nft add chain inet loss in '{ type filter hook input priority 0 ; }'
done

# set_loss PERCENT: replace the rules (A→B link: to .3 / from .3; B→A link: to .4 / from .4).
set_loss() {
  local per_mille=$(($1 * 10))
  for ns in "$NA" "$NB"; do ip netns exec "$ns" nft flush chain inet loss in; done
  [ "$per_mille" -gt 0 ] || return 0
  local r="numgen random mod 1000 < $per_mille drop"
  ip netns exec "$NB" nft add rule inet loss in ip daddr 10.99.0.3 $r
  ip netns exec "$NB" nft add rule inet loss in ip saddr 10.99.0.4 $r
  ip netns exec "$NA" nft add rule inet loss in ip saddr 10.99.0.3 $r
  ip netns exec "$NA" nft add rule inet loss in ip daddr 10.99.0.4 $r
}

# --- CA and a leaf for every address --------------------------------------------------------------
CA=$WORK/ca.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/ca.key" \
  -out "$CA" -days 2 -subj "/CN=mesh-loss CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/leaf.key" \
  -out "$WORK/leaf.csr" -subj "/CN=mesh-loss" 2>/dev/null
printf 'subjectAltName=IP:10.99.0.1,IP:10.99.0.2,IP:10.99.0.3,IP:10.99.0.4\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' \
  >"$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$CA" -CAkey "$WORK/ca.key" -CAcreateserial \
  -out "$WORK/leaf.crt" -days 2 -extfile "$WORK/leaf.ext" 2>/dev/null
for host in 10.99.0.3 10.99.0.4; do
  mkdir -p "$WORK/certs-$host"
  cp "$WORK/leaf.crt" "$WORK/certs-$host/$host.crt"
  cp "$WORK/leaf.key" "$WORK/certs-$host/$host.key"
  chmod 600 "$WORK/certs-$host/$host.key"
done
printf '%064x\n' 0 | tr 0 7 >"$WORK/mesh.psk"
chmod 600 "$WORK/mesh.psk"

# --- regions -------------------------------------------------------------------------------------
URLS="https://10.99.0.1:$PORT/derp,https://10.99.0.2:$PORT/derp"

# start_node I NS MESH_ADDR PEER_ADDR TRANSPORT: our relay in NS (named by its mesh address)
# as node I of the region.
start_node() {
  local i=$1 ns=$2 me=$3 peer=$4 transport=$5 entry
  case $transport in
    tcp) entry="$peer:$PORT" ;;
    quic) entry="quic://$peer:$PORT" ;;
  esac
  ip netns exec "$ns" "$OURS" -a "0.0.0.0:$PORT" -c "$WORK/$me.key" -http-port -1 -stun=false \
    -certmode manual -hostname "$me" -certdir "$WORK/certs-$me" --quic-port "$PORT" \
    -mesh-psk-file "$WORK/mesh.psk" -mesh-with "$entry" --mesh-ca "$CA" \
    >>"$WORK/$me.log" 2>&1 &
  PIDS[$i]=$!
}

wait_port() { # NS ADDR
  for _ in $(seq 2000); do
    ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$PORT" 2>/dev/null && return 0
    sleep 0.005
  done
  return 1
}

probe_once() {
  timeout 30 ip netns exec "$NA" "$LT" mesh --url "$URLS" --insecure --same-node-fraction 0 \
    --pairs 1 --rate 20 --duration 1ms --drain 1s >/dev/null 2>&1
}

wait_meshed() {
  for _ in $(seq 60); do probe_once && return 0; done
  log "region never meshed"
  return 1
}

start_region() { # TRANSPORT
  start_node 0 "$NA" 10.99.0.4 10.99.0.3 "$1"
  start_node 1 "$NB" 10.99.0.3 10.99.0.4 "$1"
  wait_port "$NA" 10.99.0.1 && wait_port "$NB" 10.99.0.2
}

stop_region() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

CMD="loadtest mesh --url $URLS --insecure --same-node-fraction 0 --pairs $PAIRS --rate $RATE --size $SIZE --duration $DURATION"
echo "$CMD" >"$OUT/command"
k=0
for loss in $LOSSES; do
  if [ $((k % 2)) = 0 ]; then order="tcp quic"; else order="quic tcp"; fi
  k=$((k + 1))
  for t in $order; do
    set_loss 0
    start_region "$t"
    wait_meshed || { stop_region; continue; }
    set_loss "$loss"
    log "loss $loss %, $t: $CMD"
    # shellcheck disable=SC2086
    timeout 600 ip netns exec "$NA" "$LT" mesh --url "$URLS" --insecure --same-node-fraction 0 \
      --pairs "$PAIRS" --rate "$RATE" --size "$SIZE" --duration "$DURATION" \
      --max-errors 1000000000 --json "$OUT/loss$loss.$t.json" >"$OUT/loss$loss.$t.txt" 2>&1 \
      || log "loss $loss/$t exited $?"
    set_loss 0
    stop_region
  done
done

# --- restart: SIGKILL B, start it again, time until cross-node traffic flows -----------------------
for t in tcp quic; do
  start_region "$t"
  wait_meshed || { stop_region; continue; }
  for r in $(seq "$RESTARTS"); do
    kill -9 "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
    start_node 1 "$NB" 10.99.0.3 10.99.0.4 "$t"
    wait_port "$NB" 10.99.0.2
    t0=$(date +%s%3N)
    tries=0
    until probe_once; do tries=$((tries + 1)); [ "$tries" -lt 30 ] || break; done
    t1=$(date +%s%3N)
    printf '%s\t%s\t%s\t%s\n' "$t" "$r" $((t1 - t0)) "$tries" >>"$OUT/restart.tsv"
  done
  stop_region
done

# --- summary --------------------------------------------------------------------------------------
python3 - "$OUT" "$(git -C "$REPO" rev-parse --short HEAD)" "$LOSSES" <<'EOF' >"$OUT/summary.md"
import json, os, statistics, sys
d, commit, losses = sys.argv[1], sys.argv[2], sys.argv[3].split()
print(f"Mesh link under loss, our relays ({commit}); command: `{open(os.path.join(d, 'command')).read().strip()}`\n")
print("| loss | link | p50 | p99 | p99.9 | loss (end to end) | goodput |")
print("|---|---|---|---|---|---|---|")
for loss in losses:
    for t in ("tcp", "quic"):
        try:
            r = json.load(open(os.path.join(d, f"loss{loss}.{t}.json")))
        except (OSError, ValueError):
            print(f"| {loss} % | {t} | – | – | – | – | – |")
            continue
        lat, tr = r["latency_us"], r["traffic"]
        ms = lambda us: f"{us / 1000:.2f} ms"
        print(f"| {loss} % | {t} | {ms(lat['p50'])} | {ms(lat['p99'])} | {ms(lat['p999'])} "
              f"| {100 * tr['loss_ratio']:.2f} % | {tr['bits_per_sec'] / 1e6:.1f} Mbit/s |")
rows = {}
try:
    for line in open(os.path.join(d, "restart.tsv")):
        t, _r, ms, _tries = line.split("\t")
        rows.setdefault(t, []).append(int(ms))
except OSError:
    pass
if rows:
    print("\n| link | reconnect after SIGKILL + restart (median of runs) | runs |")
    print("|---|---|---|")
    for t, v in rows.items():
        print(f"| {t} | {statistics.median(v)} ms | {', '.join(map(str, v))} |")
EOF
cat "$OUT/summary.md"
log "results in $OUT"
