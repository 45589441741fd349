#!/usr/bin/env bash
# bench/mesh-presence.sh over TLS, for our derper and Tailscale's (whose mesh links are TLS
# only): presence convergence in a two-node region with CLIENTS idle TLS clients per node.
# Both nodes: -certmode manual -hostname localhost, a throwaway CA via SSL_CERT_FILE, one mesh
# key, -mesh-with localhost:PA,localhost:PB (as bench/mesh.sh). Convergence is read from each
# node's count of keys it knows only through the mesh: ours `derp_clients_remote` on
# --metrics-addr, Go's `derp_clients_remote` (expvar gauge_clients_remote) on /debug/varz of
# its main listener (loopback requests are allowed). Counts may include a node's own mesh
# client key (one key in 10 000); thresholds are ">= CLIENTS".
#   join:    A holds CLIENTS clients; B starts; from B accepting connections until B knows all.
#   churn:   CLIENTS clients connect to B; from B counting them (derp_current_connections)
#            until A knows them all. (Go's A dialled B before B listened and retries every 5 s,
#            so the script waits 6 s after the join before this step, for both servers.)
#   restart: B SIGKILLed and started again; from it accepting connections until it knows all
#            of A's clients again.
# Usage: SERVER=ours|go-new|go-old CLIENTS=10000 bench/mesh-presence-tls.sh   (prints a table)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CLIENTS=${CLIENTS:-10000}
SERVER=${SERVER:-ours}
case $SERVER in
  ours) BIN=$REPO/target/release/derper ;;
  go-new) BIN=${TAILSCALE_DERPER_NEW:-$REPO/.tools/bench/derper-${DERPER_NEW:-v1.104.7}} ;;
  go-old) BIN=${TAILSCALE_DERPER_OLD:-$REPO/.tools/bench/derper-${DERPER_OLD:-v1.102.5}} ;;
  *) echo "SERVER=ours|go-new|go-old" >&2; exit 2 ;;
esac
LT=$REPO/target/release/loadtest
(cd "$REPO" && cargo build --release -q -p derper -p loadtest)
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
BASE=$((20000 + RANDOM % 20000))
PA=$BASE PB=$((BASE + 1)) MA=$((BASE + 2)) MB=$((BASE + 3))

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
printf '%064x\n' 0 | tr 0 7 >"$WORK/psk"
chmod 600 "$WORK/psk" "$WORK/certs/localhost.key"

now_ms() { date +%s%3N; }
metric() { # metric NODE(a|b) NAME
  local url
  if [ "$SERVER" = ours ]; then
    url=http://127.0.0.1:$([ "$1" = a ] && echo "$MA" || echo "$MB")/metrics
  else
    url=https://localhost:$([ "$1" = a ] && echo "$PA" || echo "$PB")/debug/varz
  fi
  curl -sk "$url" | grep "^$2[ {]" | awk '{print $2}' | head -1
}
wait_port() { for _ in $(seq 1000); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.005; done; return 1; }
wait_metric_ge() { # NODE NAME MIN
  for _ in $(seq 6000); do
    v=$(metric "$1" "$2"); v=${v%.*}
    [ -n "$v" ] && [ "$v" -ge "$3" ] && return 0
    sleep 0.01
  done
  echo "timed out waiting for $2 >= $3 on $1" >&2; return 1
}
start_node() { # NAME PORT METRICS_PORT
  local extra=()
  [ "$SERVER" = ours ] && extra=(--metrics-addr "127.0.0.1:$3")
  SSL_CERT_FILE=$CA SSL_CERT_DIR=$WORK/empty "$BIN" -a "127.0.0.1:$2" -c "$WORK/$1.key" \
    -http-port -1 -stun=false -certmode manual -hostname localhost -certdir "$WORK/certs" \
    -mesh-psk-file "$WORK/psk" -mesh-with "localhost:$PA,localhost:$PB" "${extra[@]}" \
    >>"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  LAST=$!
}
idle() { # PORT LOG
  "$LT" idle --url "https://localhost:$1/derp" --insecure --conns "$CLIENTS" --hold 900s \
    --source-ips 127.0.3.1-127.0.3.8 >"$2" 2>&1 &
  PIDS+=($!)
}

echo "| measurement ($SERVER derper $("$BIN" -version 2>&1 | head -1 | cut -c1-40), TLS, $CLIENTS idle TLS clients per node) | ms |"
echo "|---|---|"
start_node a "$PA" "$MA"; wait_port "$PA"
idle "$PA" "$WORK/idle-a.log"
wait_metric_ge a derp_current_connections "$CLIENTS"

start_node b "$PB" "$MB"; wait_port "$PB"; t0=$(now_ms); PID_B=$LAST
wait_metric_ge b derp_clients_remote "$CLIENTS"; t1=$(now_ms)
echo "| join: B starts; knows all of A's clients after | $((t1 - t0)) |"
sleep 6

idle "$PB" "$WORK/idle-b.log"
wait_metric_ge b derp_current_connections "$CLIENTS"; t2=$(now_ms)
wait_metric_ge a derp_clients_remote "$CLIENTS"; t3=$(now_ms)
echo "| churn: $CLIENTS clients connect to B; A knows them all after B counts them | $((t3 - t2)) |"

kill -9 "$PID_B"; wait "$PID_B" 2>/dev/null || true
start_node b "$PB" "$MB"; wait_port "$PB"; t4=$(now_ms)
wait_metric_ge b derp_clients_remote "$CLIENTS"; t5=$(now_ms)
echo "| restart: B killed (SIGKILL) and restarted; knows all of A's clients again after | $((t5 - t4)) |"
