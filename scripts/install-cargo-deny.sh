#!/usr/bin/env bash
# Installs cargo-deny at the pinned version into $REPO/.tools/bin (built once from crates.io,
# then cached). Idempotent: does nothing when the right version is there.
set -euo pipefail

CARGO_DENY_PIN="0.18.9"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$REPO/.tools/bin/cargo-deny"

have=""
[[ -x "$BIN" ]] && have="$("$BIN" --version 2>/dev/null | awk '{print $2}')"
if [[ "$have" == "$CARGO_DENY_PIN" ]]; then
    echo "cargo-deny $have already installed at $BIN"
    exit 0
fi
echo "installing cargo-deny $CARGO_DENY_PIN into $REPO/.tools (a few minutes, once) ..."
cargo install cargo-deny --locked --version "$CARGO_DENY_PIN" --root "$REPO/.tools" >/tmp/install-cargo-deny.log 2>&1 \
    || { tail -20 /tmp/install-cargo-deny.log; exit 1; }
have="$("$BIN" --version | awk '{print $2}')"
[[ "$have" == "$CARGO_DENY_PIN" ]] || { echo "installed cargo-deny reports $have, expected $CARGO_DENY_PIN" >&2; exit 1; }
echo "installed cargo-deny $have at $BIN"
