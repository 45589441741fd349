#!/usr/bin/env bash
# The one command that runs every test on a fresh machine:
#   formatting and clippy, Rust unit/property/integration tests, the Go interop suite (Tailscale's
#   own client code against our derper and stunner, and validated against Tailscale's derper),
#   and independent STUN clients from Debian.
#
# It installs what it needs: Tailscale's derper at the pinned release (scripts/install-go-tools.sh)
# and Debian packages for the STUN interop (as root). On a machine without Go or root, those steps
# say clearly that they were skipped and why; with CI=true a skipped step is a failure.
#
# Ends with one line "N passed, N failed" over the steps, and exits non-zero if any failed.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
STRICT=0
[[ "${CI:-}" == "true" ]] && STRICT=1
# A clean CI build gains nothing from incremental state, and it is the largest part of target/.
[[ $STRICT -eq 1 ]] && export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

passed=0
failed=0
failures=()
skipped=()

step() {
    local name="$1"
    shift
    echo
    echo "==> ${name}"
    local start=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        echo "<== ${name}: ok ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "<== ${name}: FAILED ($((SECONDS - start)) s); disk free here: $(df -h --output=avail . | tail -1)"
    fi
}

skip() {
    local name="$1" why="$2"
    echo
    echo "==> ${name}: SKIPPED: ${why}"
    skipped+=("${name} (${why})")
    if [[ $STRICT -eq 1 ]]; then
        failed=$((failed + 1))
        failures+=("${name} skipped under CI: ${why}")
    fi
}

have_go=0
command -v go >/dev/null 2>&1 && have_go=1

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

if [[ $have_go -eq 1 ]]; then
    step "install Tailscale derper (pinned)" scripts/install-go-tools.sh
    export TAILSCALE_DERPER="$REPO/.tools/bin/derper"
else
    skip "install Tailscale derper (pinned)" "go is not installed: Go interop tests cannot run"
fi
if [[ $have_go -eq 1 ]]; then
    step "install Pebble ACME test server (pinned)" scripts/install-pebble.sh
    export PEBBLE_BIN="$REPO/.tools/bin/pebble"
else
    skip "install Pebble ACME test server (pinned)" "go is not installed: ACME tests cannot run"
fi

# Debian packages: nftables/iproute2/conntrack for loadtest's real-NAT (network namespace) test.
# The STUN interop script installs its own (coturn, stun-client).
install_debs() {
    local missing=()
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
    command -v jq >/dev/null 2>&1 || missing+=(jq)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    ((${#missing[@]} == 0)) && return 0
    echo "installing ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/tmp/test-apt.log 2>&1 \
        || { echo "apt-get failed, see /tmp/test-apt.log"; return 1; }
}
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    step "install Debian packages (nftables, iproute2, conntrack, jq, curl)" install_debs
else
    skip "install Debian packages" "not root or no apt-get: the real-NAT loadtest test will skip"
fi

supply_chain() {
    scripts/install-cargo-deny.sh && "$REPO/.tools/bin/cargo-deny" --locked check licenses bans sources
}
step "cargo deny: licenses, bans (duplicates), sources" supply_chain

step "cargo build (derper, stunner, loadtest)" cargo build --locked -p derper -p stunner -p loadtest
step "cargo test" cargo test --workspace --locked --no-fail-fast

if [[ $have_go -eq 1 && -x "$REPO/.tools/bin/derper" ]]; then
    go_suite() {
        local bin="$1" flavor="$2"
        (cd tests/go && DERPER_BIN="$bin" DERPER_FLAVOR="$flavor" STUNNER_BIN="$REPO/target/debug/stunner" \
            TAILSCALE_DERPER_BIN="$REPO/.tools/bin/derper" \
            go test -tags ts_debug_websockets -count=1 -timeout 600s ./...)
    }
    step "go interop: Tailscale client code vs our derper + stunner" go_suite "$REPO/target/debug/derper" ours
    step "go interop: same suite vs Tailscale's derper (validates the suite)" go_suite "$REPO/.tools/bin/derper" tailscale
else
    skip "go interop suite" "go or Tailscale's derper unavailable"
fi

stun_interop() {
    local out
    out="$(STUNNER_BIN="$REPO/target/debug/stunner" bash tests/stun-interop.sh 2>&1)"
    local rc=$?
    echo "$out"
    if grep -q "skipped" <<<"$out"; then
        skipped+=("stun interop ($(grep -m1 skipped <<<"$out"))")
        [[ $STRICT -eq 1 ]] && return 1
    fi
    return $rc
}
step "stun interop: coturn and stun-client against stunner" stun_interop

tailnet() {
    bash tests/tailnet.sh
    local rc=$?
    if [[ $rc -eq 77 ]]; then
        skipped+=("tailnet (prerequisites missing, see above)")
        [[ $STRICT -eq 1 ]] && return 1
        return 0
    fi
    return $rc
}
if [[ $have_go -eq 1 ]]; then
    step "install Headscale and tailscaled (pinned)" scripts/install-tailnet-tools.sh
    # Before the tailnet step: its Headscale reads a DERP map that OpenTofu generates.
    step "install deploy tools (helm, tofu, kubevalidate, hadolint; pinned)" scripts/install-deploy-tools.sh
fi
step "tailnet: Headscale + two tailscaled relayed by our derper (root, netns)" tailnet

if [[ -x tests/loadtest-netns.sh ]]; then
    step "loadtest with real network namespaces (root)" tests/loadtest-netns.sh
fi

if [[ $have_go -eq 1 ]]; then
    step "deploy: Dockerfile, Helm chart, Terraform, DERP maps (tests/deploy.sh)" tests/deploy.sh
else
    skip "deploy validation" "go is not installed: helm, tofu and kubevalidate are built from Go modules"
fi

echo
if ((${#skipped[@]})); then
    echo "Skipped:"
    printf '  - %s\n' "${skipped[@]}"
fi
if ((${#failures[@]})); then
    echo "Failed:"
    printf '  - %s\n' "${failures[@]}"
fi
echo "disk: target/ $(du -sh target 2>/dev/null | cut -f1), .tools/ $(du -sh .tools 2>/dev/null | cut -f1), free $(df -h --output=avail . | tail -1)"
echo "steps: ${passed} passed, ${failed} failed"
[[ $failed -eq 0 ]]
