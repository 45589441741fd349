#!/usr/bin/env bash
# Install the pinned control plane and client used by tests/tailnet.sh into $REPO/.tools/bin:
#   - Headscale  (headscale)            at HEADSCALE_PIN
#   - Tailscale  (tailscaled, tailscale) at TAILSCALE_PIN
# Idempotent and cached: a tool whose recorded version matches its pin is left alone.
#
# Headscale's go.mod has replace directives, so `go install github.com/juanfont/headscale/...@v`
# is refused. Instead the module is fetched with `go mod download`, copied to a writable tree
# under .tools/src/ and built there with `go build ./cmd/headscale`. A local build reports its
# version as "dev", so the pin is recorded in a stamp file next to the binary.
set -euo pipefail

HEADSCALE_PIN="v0.29.3"
TAILSCALE_PIN="v1.102.5"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$REPO/.tools/bin"
SRC="$REPO/.tools/src"
# Headscale may need a newer Go than the one installed; let the go command fetch it.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

if ! command -v go >/dev/null 2>&1; then
    echo "error: 'go' not found in PATH; Go is needed to build Headscale ${HEADSCALE_PIN} and Tailscale ${TAILSCALE_PIN}" >&2
    exit 1
fi
mkdir -p "$BIN" "$SRC"

install_headscale() {
    local stamp="$BIN/headscale.version"
    if [[ -x "$BIN/headscale" && "$(cat "$stamp" 2>/dev/null)" == "$HEADSCALE_PIN" ]] \
        && "$BIN/headscale" version >/dev/null 2>&1; then
        echo "headscale ${HEADSCALE_PIN} already installed at ${BIN}/headscale"
        return
    fi
    echo "building github.com/juanfont/headscale@${HEADSCALE_PIN} into ${BIN} ..."
    local dir
    # `go mod download` must run outside any module so it does not touch this repo's go.mod files.
    dir="$(cd "$SRC" && go mod download -json "github.com/juanfont/headscale@${HEADSCALE_PIN}" \
        | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    if [[ -z "$dir" || ! -d "$dir" ]]; then
        echo "error: go mod download did not give a source directory for headscale ${HEADSCALE_PIN}" >&2
        exit 1
    fi
    local tree="$SRC/headscale-${HEADSCALE_PIN}"
    rm -rf "$tree"
    cp -r "$dir" "$tree"
    chmod -R u+w "$tree"
    rm -f "$stamp"
    (cd "$tree" && nice -n 10 go build -trimpath -o "$BIN/headscale" ./cmd/headscale)
    "$BIN/headscale" version >/dev/null
    echo "$HEADSCALE_PIN" >"$stamp"
    echo "installed headscale ${HEADSCALE_PIN} at ${BIN}/headscale"
}

# tailscale and tailscaled print their version (e.g. "1.102.5\n  tailscale commit: ...") first.
tailscale_version() {
    "$1" --version 2>/dev/null | head -n1 || true
}

install_tailscale() {
    local want="${TAILSCALE_PIN#v}" tool have
    local need=0
    for tool in tailscaled tailscale; do
        have=""
        [[ -x "$BIN/$tool" ]] && have="$(tailscale_version "$BIN/$tool")"
        if [[ "$have" == "$want"* ]]; then
            echo "${tool} ${have} already installed at ${BIN}/${tool}"
        else
            need=1
        fi
    done
    [[ $need -eq 0 ]] && return
    echo "installing tailscale.com/cmd/{tailscaled,tailscale}@${TAILSCALE_PIN} into ${BIN} ..."
    (cd "$SRC" && GOBIN="$BIN" nice -n 10 go install \
        "tailscale.com/cmd/tailscaled@${TAILSCALE_PIN}" "tailscale.com/cmd/tailscale@${TAILSCALE_PIN}")
    for tool in tailscaled tailscale; do
        have="$(tailscale_version "$BIN/$tool")"
        if [[ "$have" != "$want"* ]]; then
            echo "error: installed ${tool} reports version '${have}', expected ${want}*" >&2
            exit 1
        fi
        echo "installed ${tool} ${have} at ${BIN}/${tool}"
    done
}

install_headscale
install_tailscale
