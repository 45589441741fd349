#!/usr/bin/env bash
# A real tailnet through our relay: Headscale and two tailscaled, our derper the only DERP region,
# direct UDP between the nodes blocked, so every packet between them is relayed by us.
#
#   sudo tests/tailnet.sh        (scripts/test.sh runs it; needs root for network namespaces)
#
# Topology (all in network namespaces this script creates and deletes; nothing else is touched):
#
#   ns A: tailscaled a  10.201.1.2 --veth-- 10.201.1.1 ┐
#                                                      ns HUB: 10.201.0.1 (lo)    headscale, derper
#   ns B: tailscaled b  10.201.2.2 --veth-- 10.201.2.1 ┘       nftables: forwarded UDP dropped
#
# The hub routes between the nodes, and its forward chain drops every UDP packet, so the nodes'
# direct WireGuard/disco paths die there (counted) while their traffic to the relay and Headscale
# (local to the hub) and STUN to the relay pass.
#
# Variants and checks (each prints PASS/FAIL; the last line is "N passed, N failed"):
#   plain  relay over plain HTTP (clients with TS_DEBUG_USE_DERP_HTTP=1)
#   tls    relay over TLS with a self-signed IP certificate pinned in the DERP map (sha256-raw)
#   admission  the tls relay restarted with --verify-client-url pointing at Headscale's /verify
#   drain  SIGTERM to that relay, started with --drain-grace 20s
#   verify-clients  the relay restarted with --verify-clients asking node A's tailscaled
#   (the plain variant's Headscale reads the relay's live /derpmap through derp.urls; the tls
#   variant's reads the YAML that terraform/modules/derp-map writes, through real OpenTofu)
#
# Environment: DERPER_BIN, LOADTEST_BIN (default target/debug/*), TAILNET_TOOLS (default
# .tools/bin, filled by scripts/install-tailnet-tools.sh), KEEP_LOGS=1 keeps the log directory.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TAILNET_TOOLS:-$REPO/.tools/bin}"
DERPER="${DERPER_BIN:-$REPO/target/debug/derper}"
LOADTEST="${LOADTEST_BIN:-$REPO/target/debug/loadtest}"
HEADSCALE="$TOOLS/headscale"
TAILSCALED="$TOOLS/tailscaled"
TAILSCALE="$TOOLS/tailscale"
TOFU="$TOOLS/tofu"

REGION_ID=900
REGION_CODE=derpfleet
HUB_IP=10.201.0.1
NODE_IPS=(10.201.1.2 10.201.2.2)
HS_URL="http://${HUB_IP}:8080"
TLS_PORT=8443
RELAY_PLAIN_PORT=3340
STUN_PORT=3478
METRICS="${HUB_IP}:9464"
TRANSFER_BYTES=$((8 * 1024 * 1024))
DRAIN_GRACE=20

NS_HUB="tn$$hub"
NS=("tn$$a" "tn$$b")
NAMES=(node-a node-b)
WORK="$(mktemp -d /tmp/tailnet.XXXXXX)"

passed=0
failed=0
declare -a PIDS=()
declare -a MADE_NS=()
RELAY_PID=""
HS_PID=""
declare -a NODE_PIDS=("" "")
NODE_TS_IPS=("" "")
VARIANT=""

say() { echo "[$(date +%H:%M:%S)] $*"; }
pass() {
    passed=$((passed + 1))
    echo "PASS: ${VARIANT:+$VARIANT: }$1"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL: ${VARIANT:+$VARIANT: }$1${2:+ — $2}"
}
# check NAME CMD...: PASS if CMD succeeds, else FAIL with CMD's last output lines. CMD runs in
# this shell (not a subshell), so what it starts and sets stays visible.
check() {
    local name="$1" out="$WORK/check.out"
    shift
    if "$@" >"$out" 2>&1; then
        pass "$name"
        sed -n 's/^note: /      /p' "$out"
    else
        fail "$name" "$(tail -n 3 "$out" | tr '\n' ' ')"
    fi
    cat "$out" >>"$WORK/checks.log"
}

# eventually SECONDS CMD...: polls CMD every 0.2 s until it succeeds or the deadline passes;
# prints the output of the last attempt. CMD runs in a subshell: only for side-effect-free checks.
eventually() {
    local deadline=$((SECONDS + $1)) out
    shift
    until out="$("$@" 2>&1)"; do
        if ((SECONDS >= deadline)); then
            tail -n 5 <<<"$out"
            return 1
        fi
        sleep 0.2
    done
    [[ -z "$out" ]] || echo "$out"
}

# ours PID: PID is still an unreaped child of this script (so signalling it cannot hit a process
# that reused the number).
ours() { [[ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" == "$$" ]]; }

# stop PID: SIGTERM, then SIGKILL if it has not exited after 10 s; reaps it.
stop() {
    local pid="$1" i
    [[ -n "$pid" ]] && ours "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        exited "$pid" && break
        sleep 0.2
    done
    exited "$pid" || kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local pid ns
    {
        for pid in "${PIDS[@]}"; do
            ours "$pid" && kill -KILL "$pid"
        done
        wait
    } 2>/dev/null
    for ns in "${MADE_NS[@]}"; do
        ip netns delete "$ns" 2>/dev/null
    done
    if ((failed > 0)) || [[ "${KEEP_LOGS:-}" == 1 ]]; then
        echo "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# bg LOG CMD...: starts CMD in the background with its output in LOG; sets BG_PID.
bg() {
    local log="$1"
    shift
    "$@" >"$log" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

in_hub() { ip netns exec "$NS_HUB" "$@"; }

# exited PID: the child has exited (a zombie not yet reaped counts as exited).
exited() {
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 0
    [[ -z "$state" || "$state" == Z* ]]
}

# --- prerequisites -------------------------------------------------------------------------

prereqs() {
    local missing=() f
    [[ $(id -u) -eq 0 ]] || missing+=("root (network namespaces)")
    for f in ip nft jq curl python3 sha256sum; do
        command -v "$f" >/dev/null 2>&1 || missing+=("$f")
    done
    for f in "$DERPER" "$LOADTEST" "$HEADSCALE" "$TAILSCALED" "$TAILSCALE" "$TOFU"; do
        [[ -x "$f" ]] || missing+=("$f")
    done
    if ((${#missing[@]})); then
        echo "tailnet test skipped: missing ${missing[*]}"
        echo "(build with cargo build -p derper -p loadtest; install with scripts/install-tailnet-tools.sh)"
        exit 77
    fi
}

# --- network --------------------------------------------------------------------------------

make_network() {
    local i
    ip netns add "$NS_HUB" || return 1
    MADE_NS+=("$NS_HUB")
    in_hub ip link set lo up || return 1
    # On the hub's loopback (no dummy module needed): reachable from both nodes through routing.
    in_hub ip addr add "${HUB_IP}/32" dev lo || return 1
    in_hub sysctl -qw net.ipv4.ip_forward=1 || return 1
    for i in 0 1; do
        ip netns add "${NS[$i]}" || return 1
        MADE_NS+=("${NS[$i]}")
        # Created inside the namespaces, so no interface name ever appears in the root namespace.
        in_hub ip link add "veth$i" type veth peer name eth0 netns "${NS[$i]}" || return 1
        in_hub ip addr add "10.201.$((i + 1)).1/24" dev "veth$i" || return 1
        in_hub ip link set "veth$i" up || return 1
        ip -n "${NS[$i]}" link set lo up || return 1
        ip -n "${NS[$i]}" addr add "${NODE_IPS[$i]}/24" dev eth0 || return 1
        ip -n "${NS[$i]}" link set eth0 up || return 1
        ip -n "${NS[$i]}" route add default via "10.201.$((i + 1)).1" || return 1
    done
    # Everything local to the hub (relay, STUN, Headscale) is input, not forward, so only the
    # node-to-node UDP is dropped.
    in_hub nft -f - <<'EOF' || return 1
table inet tailnet_test {
    counter udp_between_nodes {}
    chain forward {
        type filter hook forward priority 0; policy accept;
        meta l4proto udp counter name "udp_between_nodes" drop
    }
}
EOF
}

udp_dropped() {
    in_hub nft -j list counter inet tailnet_test udp_between_nodes \
        | jq -r '.nftables[] | select(.counter) | .counter.packets'
}

# --- relay ----------------------------------------------------------------------------------

derper_has() { "$DERPER" --help 2>&1 | grep -q -- "--$1"; }

# start_relay MODE EXTRA_FLAGS...: our derper in the hub; MODE plain|tls. Sets RELAY_PID and,
# for tls, CERT_PIN.
start_relay() {
    local mode="$1" log
    shift
    mkdir -p "$WORK/relay"
    log="$WORK/relay/derper.$((++RELAY_STARTS)).log"
    local args=(-c "$WORK/relay/key.json" --stun-port "$STUN_PORT" --metrics-addr "$METRICS")
    if [[ $mode == tls ]]; then
        args+=(-a "${HUB_IP}:${TLS_PORT}" --certmode manual --hostname "$HUB_IP"
            --certdir "$WORK/relay/certs" --http-port -1)
    else
        args+=(-a "${HUB_IP}:${RELAY_PLAIN_PORT}")
    fi
    bg "$log" ip netns exec "$NS_HUB" "$DERPER" "${args[@]}" "$@"
    RELAY_PID=$BG_PID
    local port=$RELAY_PLAIN_PORT
    [[ $mode == tls ]] && port=$TLS_PORT
    if ! eventually 30 in_hub bash -c "exec 3<>/dev/tcp/${HUB_IP}/${port}"; then
        echo "relay did not start listening; log:"
        tail -n 20 "$log"
        return 1
    fi
    if [[ $mode == tls ]]; then
        local pin
        pin="$(grep -o 'sha256-raw:[0-9a-f]\{64\}' "$log" | head -n1)"
        [[ -n "$pin" ]] || { echo "relay printed no sha256-raw pin"; return 1; }
        # A restart must serve the certificate the DERP map pins (it is kept in --certdir).
        if [[ -n "$CERT_PIN" && "$pin" != "$CERT_PIN" ]]; then
            echo "certificate changed across a restart: $CERT_PIN -> $pin"
            return 1
        fi
        CERT_PIN="$pin"
    fi
}
RELAY_STARTS=0
CERT_PIN=""

# write_derp_maps MODE: the DERP map as Headscale's YAML (derp.paths) and as tailcfg JSON for
# loadtest probe. The tls variant's map is generated by terraform/modules/derp-map through real
# OpenTofu, so Headscale itself proves it accepts what the module writes. The plain variant's
# Headscale reads the relay's live /derpmap instead; its files need InsecureForTests (which a
# production map never sets), so they are written here.
write_derp_maps() {
    local mode="$1"
    if [[ $mode == tls ]]; then
        terraform_derp_maps
        return
    fi
    # InsecureForTests only matters for TLS (plain HTTP is chosen by the clients'
    # TS_DEBUG_USE_DERP_HTTP); it is set as derper's --dev docs suggest.
    # Headscale decodes with yaml.v3: keys are the Go field names in lower case.
    cat >"$WORK/hs/derp.yaml" <<EOF
regions:
  ${REGION_ID}:
    regionid: ${REGION_ID}
    regioncode: ${REGION_CODE}
    regionname: Our relay
    nodes:
      - name: ${REGION_ID}a
        regionid: ${REGION_ID}
        hostname: "${HUB_IP}"
        ipv4: "${HUB_IP}"
        ipv6: none
        stunport: ${STUN_PORT}
        stunonly: false
        derpport: ${RELAY_PLAIN_PORT}
        insecurefortests: true
EOF
    jq -n --argjson id "$REGION_ID" --arg code "$REGION_CODE" --arg ip "$HUB_IP" \
        --argjson port "$RELAY_PLAIN_PORT" --argjson stun "$STUN_PORT" \
        '{Regions: {($id | tostring): {RegionID: $id, RegionCode: $code, Nodes: [
            {Name: "\($id)a", RegionID: $id, HostName: $ip, IPv4: $ip, STUNPort: $stun,
             DERPPort: $port, InsecureForTests: true}]}}}' \
        >"$WORK/derpmap.json"
}

# terraform_derp_maps: `tofu apply` of a root module that calls modules/derp-map with this
# relay (offline: the module has no providers), writing its YAML and JSON outputs.
terraform_derp_maps() {
    local dir="$WORK/tf" state="$WORK/tf/terraform.tfstate"
    mkdir -p "$dir"
    cat >"$dir/main.tf" <<EOF
module "map" {
  source = "${REPO}/terraform/modules/derp-map"
  regions = [{
    region_id   = ${REGION_ID}
    region_code = "${REGION_CODE}"
    region_name = "Our relay"
    nodes = [{
      name      = "${REGION_ID}a"
      host_name = "${HUB_IP}"
      cert_name = "${CERT_PIN}"
      ipv4      = "${HUB_IP}"
      ipv6      = "none"
      stun_port = ${STUN_PORT}
      derp_port = ${TLS_PORT}
    }]
  }]
}
output "yaml" { value = module.map.headscale_derp_yaml }
output "json" { value = module.map.derp_map_json }
EOF
    {
        TF_DATA_DIR="$dir/.terraform" "$TOFU" -chdir="$dir" init -backend=false -input=false -no-color &&
            TF_DATA_DIR="$dir/.terraform" "$TOFU" -chdir="$dir" apply -auto-approve -input=false \
                -no-color -state="$state"
    } >"$dir/tofu.log" 2>&1 || {
        echo "tofu could not generate the DERP map; log:"
        tail -n 20 "$dir/tofu.log"
        return 1
    }
    "$TOFU" -chdir="$dir" output -state="$state" -raw yaml >"$WORK/hs/derp.yaml" &&
        "$TOFU" -chdir="$dir" output -state="$state" -raw json >"$WORK/derpmap.json"
}

# --- headscale ------------------------------------------------------------------------------

hs() { "$HEADSCALE" -c "$WORK/hs/config.yaml" "$@"; }

start_headscale() {
    cat >"$WORK/hs/config.yaml" <<EOF
server_url: ${HS_URL}
listen_addr: ${HUB_IP}:8080
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
grpc_allow_insecure: false
noise:
  private_key_path: ${WORK}/hs/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: false
  urls: ${HS_DERP_URLS}
  paths: ${HS_DERP_PATHS}
  auto_update_enabled: false
  update_frequency: 24h
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: ${WORK}/hs/db.sqlite
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: ""
dns:
  magic_dns: false
  base_domain: tailnet.test
  override_local_dns: false
  nameservers:
    global: []
unix_socket: ${WORK}/hs/headscale.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
taildrop:
  enabled: false
EOF
    bg "$WORK/hs/headscale.log" ip netns exec "$NS_HUB" "$HEADSCALE" -c "$WORK/hs/config.yaml" serve
    HS_PID=$BG_PID
    if ! eventually 30 in_hub curl -fsS "${HS_URL}/health"; then
        echo "headscale did not become healthy; log:"
        tail -n 20 "$WORK/hs/headscale.log"
        return 1
    fi
    local uid
    uid="$(hs users create tailnet-test -o json | jq -r '.id')" || return 1
    AUTHKEY="$(hs preauthkeys create -u "$uid" --reusable -e 1h -o json | jq -r '.key')"
    [[ -n "$AUTHKEY" && "$AUTHKEY" != null ]] || { echo "no pre-auth key"; return 1; }
}

# --- nodes ----------------------------------------------------------------------------------

ts() { "$TAILSCALE" --socket="$WORK/node$1/tailscaled.sock" "${@:2}"; }

# start_node I ENV...: tailscaled in userspace networking in ns I, joined with the pre-auth key.
start_node() {
    local i="$1" dir="$WORK/node$1"
    shift
    mkdir -p "$dir/state"
    bg "$dir/tailscaled.log" ip netns exec "${NS[$i]}" env "$@" "$TAILSCALED" \
        --tun=userspace-networking --statedir="$dir/state" --socket="$dir/tailscaled.sock" \
        --port=41641 --no-logs-no-support
    NODE_PIDS[i]=$BG_PID
    eventually 30 ts "$i" status --json >/dev/null || return 1
    ts "$i" up --login-server="$HS_URL" --authkey="$AUTHKEY" --hostname="${NAMES[$i]}" \
        --accept-dns=false --timeout=60s || return 1
    NODE_TS_IPS[i]="$(ts "$i" ip -4)"
    [[ -n "${NODE_TS_IPS[$i]}" ]]
}

peer_online() {
    ts "$1" status --json | jq -e --arg ip "${NODE_TS_IPS[$2]}" \
        '[.Peer[] | select(.TailscaleIPs | index($ip)) | .Online] | any' >/dev/null
}

# ping_via_derp FROM TO: one disco ping answered through our region, and none directly.
ping_via_derp() {
    local out
    out="$(ts "$1" ping --until-direct=false -c 2 --timeout 5s "${NODE_TS_IPS[$2]}" 2>&1)"
    echo "$out" >>"$WORK/ping.log"
    grep -q "via DERP(${REGION_CODE})" <<<"$out" || { echo "$out"; return 1; }
    if grep "pong from" <<<"$out" | grep -vq "via DERP"; then
        echo "a pong came over a direct path: $out"
        return 1
    fi
    echo "note: $(grep -m1 "via DERP" <<<"$out")"
}

# transfer FROM TO: TRANSFER_BYTES random bytes through `tailscale nc` into a listener on the
# peer's localhost (userspace tailscaled forwards inbound TCP for its own IP to 127.0.0.1:port).
transfer() {
    local from="$1" to="$2" port=$((20000 + RANDOM % 10000)) dir="$WORK/transfer.$1to$2"
    mkdir -p "$dir"
    head -c "$TRANSFER_BYTES" /dev/urandom >"$dir/sent"
    # A background job's stdin is /dev/null, so the listener is a file, not a here-document.
    cat >"$dir/listener.py" <<'EOF'
import socket, sys
port, out, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
srv.settimeout(120)
open(ready, "w").close()
conn, _ = srv.accept()
conn.settimeout(120)
with open(out, "wb") as f:
    while True:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        f.write(chunk)
EOF
    bg "$dir/listener.log" ip netns exec "${NS[$to]}" python3 "$dir/listener.py" "$port" \
        "$dir/received" "$dir/ready"
    local listener=$BG_PID
    eventually 10 test -e "$dir/ready" || { echo "listener not ready: $(cat "$dir/listener.log")"; return 1; }
    local start=$SECONDS relayed_before
    relayed_before="$(metric_sum derp_bytes_received_total)"
    timeout 120 "$TAILSCALE" --socket="$WORK/node$from/tailscaled.sock" nc \
        "${NODE_TS_IPS[$to]}" "$port" <"$dir/sent" >/dev/null || { echo "tailscale nc failed"; return 1; }
    eventually 120 exited "$listener" || return 1
    wait "$listener" || { echo "listener failed: $(cat "$dir/listener.log")"; return 1; }
    local a b
    a="$(sha256sum <"$dir/sent" | cut -d' ' -f1)"
    b="$(sha256sum <"$dir/received" | cut -d' ' -f1)"
    local relayed=$(($(metric_sum derp_bytes_received_total) - relayed_before))
    echo "note: sent $(stat -c %s "$dir/sent") bytes, received $(stat -c %s "$dir/received")" \
        "in $((SECONDS - start)) s; our relay received ${relayed} bytes meanwhile"
    [[ "$a" == "$b" ]] || { echo "sha256 differs"; return 1; }
    ((relayed >= TRANSFER_BYTES)) || { echo "the relay carried only ${relayed} bytes"; return 1; }
}

# probe_random_key: loadtest probe (a DERP client with a fresh random key) from node A's
# namespace; succeeds when the relay admitted it and relayed a packet.
probe_random_key() {
    local plain=()
    [[ $VARIANT == plain ]] && plain=(--plain)
    ip netns exec "${NS[0]}" "$LOADTEST" probe --derp-map "$WORK/derpmap.json" --no-stun \
        --timeout 5s "${plain[@]}" --json - 2>/dev/null | tee "$WORK/probe.$1.json" \
        | jq -e '.extra.probe[0].connect_us != null' >/dev/null
}

# node_map_matches N FILE: the DERP map node N got from Headscale (`tailscale debug derp-map`)
# has FILE's region with the same node fields, so what Terraform wrote reached the client intact.
node_map_matches() {
    local fields='.Regions[] | {RegionID, RegionCode, Nodes: [.Nodes[] | {Name, HostName, CertName, IPv4, IPv6, STUNPort, DERPPort}]}'
    diff <(ts "$1" debug derp-map | jq -S "$fields") <(jq -S "$fields" "$2")
}
health_has() { ts "$1" status --json | jq -e --arg s "$2" '[.Health[]? | contains($s)] | any' >/dev/null; }
metric() { in_hub curl -fsS "http://${METRICS}/metrics"; }
# metric_sum NAME [LABEL_MATCH]: sum of the samples of NAME whose labels contain LABEL_MATCH.
metric_sum() {
    metric | awk -v n="$1" -v l="${2:-}" '($1 == n || index($1, n "{") == 1) && index($1, l) { s += $2 }
        END { printf "%d\n", s }'
}
http_status() { in_hub curl -s -o /dev/null -w '%{http_code}' "http://${METRICS}$1"; }

teardown_cluster() {
    local i
    for i in 0 1; do stop "${NODE_PIDS[$i]}"; done
    stop "$HS_PID"
    stop_relay_now
    rm -rf "$WORK/node0" "$WORK/node1" "$WORK/hs"
}

# The relay without a drain: SIGKILL (a crash, as far as clients can tell).
stop_relay_now() {
    [[ -n "$RELAY_PID" ]] || return 0
    ours "$RELAY_PID" && kill -KILL "$RELAY_PID" 2>/dev/null
    wait "$RELAY_PID" 2>/dev/null
    RELAY_PID=""
}

# cluster MODE: relay, Headscale with the relay as its only region, two nodes joined. The plain
# variant has Headscale fetch the map from the relay's live /derpmap (derp.urls); the tls one
# reads a file (derp.paths).
cluster() {
    local mode="$1" env=()
    [[ $mode == plain ]] && env=(TS_DEBUG_USE_DERP_HTTP=1)
    mkdir -p "$WORK/hs"
    if [[ $mode == plain ]]; then
        start_relay "$mode" --derp-map-region-id "$REGION_ID" --derp-map-region-code "$REGION_CODE" \
            --derp-map-region-name "Our relay" --derp-map-node-name "${REGION_ID}a" \
            --derp-map-ipv4 "$HUB_IP" || return 1
        HS_DERP_URLS="[\"http://${HUB_IP}:${RELAY_PLAIN_PORT}/derpmap\"]"
        HS_DERP_PATHS="[]"
    else
        start_relay "$mode" || return 1
        HS_DERP_URLS="[]"
        HS_DERP_PATHS="[\"${WORK}/hs/derp.yaml\"]"
    fi
    write_derp_maps "$mode" || return 1
    start_headscale || return 1
    start_node 0 "${env[@]}" || return 1
    start_node 1 "${env[@]}" || return 1
    eventually 60 peer_online 0 1 && eventually 60 peer_online 1 0
}

# --- the test -------------------------------------------------------------------------------

prereqs
say "logs in $WORK"
say "headscale $(cat "$TOOLS/headscale.version" 2>/dev/null), tailscaled $("$TAILSCALED" --version | head -n1)"
make_network || { fail "network namespaces" "could not build the topology"; exit 1; }

for VARIANT in plain tls; do
    say "variant $VARIANT"
    if ! check "two tailscaled joined through Headscale, each sees the other online" cluster "$VARIANT"; then
        teardown_cluster
        continue
    fi
    check "tailscale ping A->B answered via DERP(${REGION_CODE})" eventually 60 ping_via_derp 0 1
    check "tailscale ping B->A answered via DERP(${REGION_CODE})" eventually 60 ping_via_derp 1 0
    if [[ $VARIANT == plain ]]; then
        check "$((TRANSFER_BYTES >> 20)) MiB A->B through the tailnet, sha256 equal, carried by our relay" transfer 0 1
    else
        check "$((TRANSFER_BYTES >> 20)) MiB B->A through the tailnet, sha256 equal, carried by our relay" transfer 1 0
    fi
    if [[ $VARIANT == tls ]]; then
        check "node A's DERP map from Headscale is the one terraform/modules/derp-map generated" \
            node_map_matches 0 "$WORK/derpmap.json"
    fi
    dropped="$(udp_dropped)"
    check "direct UDP between the nodes was tried and dropped ($dropped packets)" test "${dropped:-0}" -gt 0
    check "a DERP client with a random key is admitted without admission (control)" probe_random_key open
    [[ $VARIANT == tls ]] && break
    teardown_cluster
done

# Admission and drain run on the tls cluster, with the relay restarted with the new flags.
VARIANT=admission
relay_flags=()
have_verify=0
have_drain=0
derper_has verify-client-url && have_verify=1
derper_has drain-grace && have_drain=1
((have_verify)) && relay_flags+=(--verify-client-url "${HS_URL}/verify")
((have_drain)) && relay_flags+=(--drain-grace "${DRAIN_GRACE}s")
cluster_up=0
if [[ -n "$RELAY_PID" ]]; then
    stop_relay_now
    check "relay restarted (same key and certificate) ${relay_flags[*]}" \
        start_relay tls "${relay_flags[@]}" && cluster_up=1
else
    fail "admission and drain" "the tls cluster did not come up"
fi
random_key_refused() {
    if probe_random_key refused; then
        echo "the relay admitted a random key"
        return 1
    fi
    echo "note: loadtest probe: $(jq -r '.extra.probe[0].failures | join("; ")' "$WORK/probe.refused.json")"
}
# The two nodes were allowed by Headscale's answer and the random key was denied by it.
admission_counted() {
    (($(metric_sum derp_admission_calls_total 'result="allow"') >= 2)) \
        && (($(metric_sum derp_admission_calls_total 'result="deny"') >= 1)) \
        && (($(metric_sum derp_admission_decisions_total 'outcome="denied') >= 1))
}
if ((!cluster_up)); then
    : # reported above
elif ((have_verify)); then
    check "nodes reconnect through the verifying relay: ping A->B via DERP" eventually 60 ping_via_derp 0 1
    check "nodes reconnect through the verifying relay: ping B->A via DERP" eventually 60 ping_via_derp 1 0
    check "a DERP client with a random key is refused" random_key_refused
    check "relay counted Headscale's answers: >= 2 allow (the nodes), >= 1 deny (the random key)" \
        eventually 10 admission_counted
    metric | grep '^derp_admission_' >"$WORK/admission.metrics"
    sed 's/^/    /' "$WORK/admission.metrics"
else
    fail "Headscale /verify admission" "this derper has no --verify-client-url (not yet merged from main)"
fi

VARIANT=drain
status_is() { [[ "$(http_status "$1")" == "$2" ]]; }
health_lacks() { ! health_has "$1" "$2"; }
# drain_watch SECONDS: samples node A's Health until the relay exits; fails if a sample while the
# relay still ran lacked the text, or if it has not exited by the deadline.
drain_watch() {
    local deadline=$((SECONDS + $1)) samples=0 misses=0
    while ! exited "$RELAY_PID"; do
        ((SECONDS < deadline)) || { echo "relay still running after $1 s"; return 1; }
        samples=$((samples + 1))
        health_has 0 draining || { exited "$RELAY_PID" || misses=$((misses + 1)); }
        sleep 0.5
    done
    echo "note: Health showed \"draining\" in $((samples - misses)) of ${samples} samples"
    ((samples > 0 && misses == 0))
}
if ((!cluster_up)); then
    :
elif ((have_drain)); then
    eventually 60 ping_via_derp 0 1 >/dev/null
    check "/readyz is 200 before the drain" status_is /readyz 200
    kill -TERM "$RELAY_PID"
    drain_start=$SECONDS
    check "node A shows the relay's Health text containing \"draining\"" eventually 15 health_has 0 draining
    check "node B shows the relay's Health text containing \"draining\"" eventually 15 health_has 1 draining
    ts 0 status --json | jq -c '.Health' >"$WORK/health.during-drain.json"
    echo "    node A Health while draining: $(cat "$WORK/health.during-drain.json")"
    check "/readyz answers 503 while draining" eventually 5 status_is /readyz 503
    check "/healthz answers 200 while draining" eventually 5 status_is /healthz 200
    check "node A shows \"draining\" for as long as the relay drains, which ends within the grace (${DRAIN_GRACE} s) plus 10 s" \
        drain_watch $((DRAIN_GRACE + 10))
    wait "$RELAY_PID"
    rc=$?
    RELAY_PID=""
    check "relay exit status 0 after the drain (was $rc, after $((SECONDS - drain_start)) s)" test "$rc" -eq 0
    check "relay restarted after the drain" start_relay tls "${relay_flags[@]}"
    check "nodes reconnect: ping A->B via DERP again" eventually 60 ping_via_derp 0 1
    check "nodes reconnect: ping B->A via DERP again" eventually 60 ping_via_derp 1 0
    check "the draining Health text is gone from node A" eventually 30 health_lacks 0 draining
else
    fail "drain seen by the nodes" "this derper has no --drain-grace (not yet merged from main)"
fi

# --verify-clients: the relay asks node A's tailscaled (LocalAPI whois) whether a key is in the
# tailnet, as derper does with the tailscaled beside it.
VARIANT=verify-clients
verify_clients_counted() {
    (($(metric_sum derp_admission_calls_total 'result="allow"') >= 2)) \
        && (($(metric_sum derp_admission_calls_total 'result="deny"') >= 1))
}
if ((!cluster_up)); then
    :
elif derper_has verify-clients; then
    [[ -n "$RELAY_PID" ]] && stop_relay_now
    check "relay restarted with --verify-clients --socket <node A's tailscaled socket>" \
        start_relay tls --verify-clients --socket "$WORK/node0/tailscaled.sock"
    check "nodes reconnect through the relay asking tailscaled: ping A->B via DERP" eventually 60 ping_via_derp 0 1
    check "nodes reconnect through the relay asking tailscaled: ping B->A via DERP" eventually 60 ping_via_derp 1 0
    check "a DERP client with a random key is refused (tailscaled does not know it)" random_key_refused
    check "relay counted tailscaled's answers: >= 2 allow (the nodes), >= 1 deny" eventually 10 verify_clients_counted
else
    fail "--verify-clients" "this derper has no --verify-clients"
fi

VARIANT=""
echo
echo "${passed} passed, ${failed} failed"
((failed == 0))
