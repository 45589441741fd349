#!/usr/bin/env bash
# Independent STUN clients from Debian against our stunner, on loopback:
#   - coturn's turnutils_stunclient (RFC 5389; RFC 5780 behaviour discovery when the server sends
#     OTHER-ADDRESS: CHANGE-REQUEST + RESPONSE-PORT, then CHANGE-REQUEST + PADDING),
#   - stun-client's `stun` (Vovida, RFC 3489: MAPPED/SOURCE/CHANGED-ADDRESS, CHANGE-REQUEST tests).
#
# Usage: bash tests/stun-interop.sh            (builds stunner with cargo)
#        STUNNER_BIN=path/to/stunner bash tests/stun-interop.sh
# Installs coturn and stun-client with apt-get if missing (apt-get update once); without root or
# apt it prints "skipped: needs root/apt" and exits 0. Ends with "N passed, N failed".
set -uo pipefail

cd "$(dirname "$0")/.."

need_install=()
command -v turnutils_stunclient >/dev/null || need_install+=(coturn)
command -v stun >/dev/null || need_install+=(stun-client)
if ((${#need_install[@]})); then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "stun-interop: skipped: needs root/apt to install ${need_install[*]}"
        exit 0
    fi
    echo "stun-interop: installing ${need_install[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}"; } >/tmp/stun-interop-apt.log 2>&1; then
        echo "stun-interop: skipped: needs root/apt (apt-get failed, see /tmp/stun-interop-apt.log)"
        exit 0
    fi
fi

if [[ -z "${STUNNER_BIN:-}" ]]; then
    cargo build -q -p stunner || { echo "stun-interop: cargo build -p stunner failed"; exit 1; }
    target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    STUNNER_BIN="$target_dir/debug/stunner"
fi
[[ -x "$STUNNER_BIN" ]] || { echo "stun-interop: no stunner binary at $STUNNER_BIN"; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
check() { # check NAME FILE REGEX...: every extended regex must match a line of FILE
    local name=$1 file=$2
    shift 2
    for re in "$@"; do
        if ! grep -Eq -- "$re" "$file"; then
            echo "FAIL $name: no line matching /$re/ in:"
            sed 's/^/    /' "$file"
            failed=$((failed + 1))
            return
        fi
    done
    echo "PASS $name"
    passed=$((passed + 1))
}
check_absent() { # check_absent NAME FILE REGEX
    if grep -Eq -- "$3" "$2"; then
        echo "FAIL $1: unexpected /$3/ in:"
        sed 's/^/    /' "$2"
        failed=$((failed + 1))
    else
        echo "PASS $1"
        passed=$((passed + 1))
    fi
}

# start NAME ARGS...: runs stunner, waits for its "listening on" lines, sets ADDRS (one per line).
start() {
    local name=$1
    shift
    "$STUNNER_BIN" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids+=($!)
    for _ in $(seq 100); do
        grep -q "listening on" "$tmp/$name.out" 2>/dev/null && break
        sleep 0.05
    done
    sleep 0.1 # all lines are printed and flushed together
    ADDRS=$(sed -n 's/^listening on //p' "$tmp/$name.out")
    [[ -n "$ADDRS" ]] || { echo "FAIL $name: stunner did not start:"; cat "$tmp/$name.err"; exit 1; }
}
port_of() { sed -E 's/.*:([0-9]+)$/\1/' <<<"$1"; }

# 1. Plain mode, IPv4 and IPv6: XOR-MAPPED-ADDRESS equals the client's address, no RFC 5780.
mport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || true)
start plain --listen 127.0.0.1:0 --listen '[::1]:0' ${mport:+--metrics-addr 127.0.0.1:$mport}
p4=$(port_of "$(sed -n 1p <<<"$ADDRS")")
p6=$(port_of "$(sed -n 2p <<<"$ADDRS")")
timeout 10 turnutils_stunclient -p "$p4" 127.0.0.1 >"$tmp/c1" 2>&1
check "turnutils_stunclient IPv4 reflexive address" "$tmp/c1" 'IPv4\. UDP reflexive addr: 127\.0\.0\.1:[0-9]+'
check_absent "no RFC 5780 attributes without --other-addr" "$tmp/c1" 'RFC 5780 response'
timeout 10 turnutils_stunclient -p "$p6" ::1 >"$tmp/c2" 2>&1
check "turnutils_stunclient IPv6 reflexive address" "$tmp/c2" 'IPv6\. UDP reflexive addr: ::1:[0-9]+'

# The RFC 3489 client without RFC 5780 addresses: test I answered, the change tests not.
timeout 30 stun "127.0.0.1:$p4" -v >"$tmp/c3" 2>&1
check "stun (RFC 3489) mapped address, change tests unanswered" "$tmp/c3" \
    'MappedAddress = 127\.0\.0\.1:[0-9]+' 'test I = 1' 'test II = 0'

# 2. RFC 5780 mode on 127.0.0.1 + 127.0.0.2.
start rfc5780 --listen 127.0.0.1:0 --other-addr 127.0.0.2:0
primary=$(sed -n 1p <<<"$ADDRS")
other=$(sed -n 4p <<<"$ADDRS")
pp=$(port_of "$primary")
timeout 20 turnutils_stunclient -p "$pp" 127.0.0.1 >"$tmp/c4" 2>&1
check "turnutils_stunclient RFC 5780 behaviour discovery" "$tmp/c4" \
    'RFC 5780 response 1' 'RFC 5780 response 2' 'RFC 5780 response 3' \
    "Other addr: : ${other//./\\.}\$" \
    "Response origin: : ${primary//./\\.}\$" \
    "Response origin: : ${other//./\\.}\$" \
    'UDP reflexive addr: 127\.0\.0\.1:[0-9]+'
timeout 30 stun "127.0.0.1:$pp" -v >"$tmp/c5" 2>&1
check "stun (RFC 3489) CHANGED-ADDRESS and change tests" "$tmp/c5" \
    'MappedAddress = 127\.0\.0\.1:[0-9]+' "ChangedAddress = ${other//./\\.}" \
    'SourceAddress = 127\.0\.0\.2:' 'test I = 1' 'test II = 1' 'test III = 1'

# 3. The plain server counted what it answered (Prometheus exporter).
if [[ -n "$mport" ]] && command -v curl >/dev/null; then
    curl -s "http://127.0.0.1:$mport/metrics" >"$tmp/metrics"
    check "prometheus metrics" "$tmp/metrics" \
        'stun_requests_total\{disposition="success"\} [1-9]' \
        'stun_requests_by_family_total\{family="ipv6"\} [1-9]'
fi

echo "stun-interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
