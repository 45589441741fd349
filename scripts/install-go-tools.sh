#!/usr/bin/env bash
# Install the pinned Go tools used by the interop tests and benchmarks into
# $REPO/.tools/bin. Idempotent: does nothing if the right version is present.
#
#   scripts/install-go-tools.sh            # install / verify
#   DERPER_BIN=$(scripts/install-go-tools.sh --print-derper)   # path only
set -euo pipefail

TAILSCALE_PIN="v1.102.5"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GOBIN_DIR="$REPO/.tools/bin"
DERPER="$GOBIN_DIR/derper"

print_only=0
if [[ "${1:-}" == "--print-derper" ]]; then
    print_only=1
fi

log() { if [[ $print_only -eq 0 ]]; then echo "$@"; else echo "$@" >&2; fi; }

if ! command -v go >/dev/null 2>&1; then
    echo "error: 'go' not found in PATH; install Go (>= 1.26) to build Tailscale's derper ${TAILSCALE_PIN}" >&2
    exit 1
fi

want="${TAILSCALE_PIN#v}"
have=""
if [[ -x "$DERPER" ]]; then
    have="$("$DERPER" --version 2>/dev/null | head -n1 || true)"
fi

if [[ "$have" == "$want"* ]]; then
    log "derper ${have} already installed at ${DERPER}"
else
    if [[ -n "$have" ]]; then
        log "replacing derper ${have} at ${DERPER} with ${want}"
    fi
    log "installing tailscale.com/cmd/derper@${TAILSCALE_PIN} into ${GOBIN_DIR} ..."
    mkdir -p "$GOBIN_DIR"
    GOBIN="$GOBIN_DIR" go install "tailscale.com/cmd/derper@${TAILSCALE_PIN}"
    have="$("$DERPER" --version 2>/dev/null | head -n1 || true)"
    if [[ "$have" != "$want"* ]]; then
        echo "error: installed derper reports version '${have}', expected ${want}*" >&2
        exit 1
    fi
    log "installed derper ${have} at ${DERPER}"
fi

if [[ $print_only -eq 1 ]]; then
    echo "$DERPER"
fi
