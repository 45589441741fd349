#!/usr/bin/env bash
# Install Pebble (Let's Encrypt's ACME test server) at a pinned version into $REPO/.tools/bin,
# for the ACME integration tests (tests/tests/acme.rs, which find it through PEBBLE_BIN).
# Idempotent: does nothing if the pinned version is already there.
#
#   scripts/install-pebble.sh                 # install / verify
#   PEBBLE_BIN=$(scripts/install-pebble.sh --print)   # path only
set -euo pipefail

PEBBLE_PIN="v2.10.3"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GOBIN_DIR="$REPO/.tools/bin"
PEBBLE="$GOBIN_DIR/pebble"

print_only=0
[[ "${1:-}" == "--print" ]] && print_only=1
log() { if [[ $print_only -eq 0 ]]; then echo "$@"; else echo "$@" >&2; fi; }

if ! command -v go >/dev/null 2>&1; then
    echo "error: 'go' not found in PATH; install Go to build Pebble ${PEBBLE_PIN}" >&2
    exit 1
fi

module_version() {
    # The main module's version as the Go toolchain embedded it in the binary.
    go version -m "$PEBBLE" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

have=""
[[ -x "$PEBBLE" ]] && have="$(module_version || true)"
if [[ "$have" == "$PEBBLE_PIN" ]]; then
    log "pebble ${have} already installed at ${PEBBLE}"
else
    [[ -n "$have" ]] && log "replacing pebble ${have} at ${PEBBLE} with ${PEBBLE_PIN}"
    log "installing github.com/letsencrypt/pebble/v2/cmd/pebble@${PEBBLE_PIN} into ${GOBIN_DIR} ..."
    mkdir -p "$GOBIN_DIR"
    GOBIN="$GOBIN_DIR" nice -n 10 go install "github.com/letsencrypt/pebble/v2/cmd/pebble@${PEBBLE_PIN}"
    have="$(module_version || true)"
    if [[ "$have" != "$PEBBLE_PIN" ]]; then
        echo "error: installed pebble reports module version '${have}', expected ${PEBBLE_PIN}" >&2
        exit 1
    fi
    log "installed pebble ${have} at ${PEBBLE}"
fi

[[ $print_only -eq 1 ]] && echo "$PEBBLE"
exit 0
