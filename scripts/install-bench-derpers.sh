#!/usr/bin/env bash
# Install the Tailscale derper baselines used by bench/run.sh (benchmarks only, not CI) into
# $REPO/.tools/bench:
#   derper-v1.104.7   newest release; needs Go >= 1.27.4 (GOTOOLCHAIN=auto fetches it through
#                     the module proxy). Built from a small hand-written module that requires
#                     tailscale.com v1.104.7 and pins github.com/tailscale/setec to the version
#                     v1.102.5 requires (the proxy refuses the one v1.104.7 asks for). No
#                     `go mod tidy`: only the cmd/derper package graph is resolved (-mod=mod).
#   derper-v1.102.5   the interop pin; copied from .tools/bin/derper when
#                     scripts/install-go-tools.sh already installed it, else `go install`.
# Idempotent: a binary whose `-version` starts with the expected version is kept.
#
#   scripts/install-bench-derpers.sh              # install / verify both
#   scripts/install-bench-derpers.sh --print      # also print "VERSION PATH" lines on stdout
set -euo pipefail

NEW=${BENCH_DERPER_NEW:-v1.104.7}
OLD=${BENCH_DERPER_OLD:-v1.102.5}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$REPO/.tools/bench"
mkdir -p "$DIR"

print=0
[[ "${1:-}" == "--print" ]] && print=1
log() { echo "[install-bench-derpers] $*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    log "error: 'go' not found in PATH (Go >= 1.26 needed; newer toolchains come via GOTOOLCHAIN=auto)"
    exit 1
fi

# version_ok BIN VERSION: BIN exists and its -version output starts with VERSION (no "v").
version_ok() {
    [[ -x "$1" ]] && [[ "$("$1" -version 2>/dev/null | head -n1)" == "${2#v}"* ]]
}

# gomod_of VERSION: path of tailscale.com@VERSION's go.mod in the module cache (downloads it;
# GOTOOLCHAIN=auto because a release may need a newer Go than the installed one).
gomod_of() {
    local mod
    mod=$(cd "$DIR" && GOTOOLCHAIN=auto GOFLAGS="-mod=mod -buildvcs=false" go mod download -json "tailscale.com@$1" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    [[ -f "$mod" ]] || { log "error: no go.mod for tailscale.com@$1"; return 1; }
    echo "$mod"
}

install_old() {
    local bin="$DIR/derper-$OLD"
    if version_ok "$bin" "$OLD"; then
        log "derper $OLD present: $bin"
        return
    fi
    if version_ok "$REPO/.tools/bin/derper" "$OLD"; then
        log "copying $REPO/.tools/bin/derper ($OLD) to $bin"
        cp "$REPO/.tools/bin/derper" "$bin.tmp" && mv "$bin.tmp" "$bin"
    else
        log "go install tailscale.com/cmd/derper@$OLD"
        local gobin="$DIR/gobin-$OLD"
        mkdir -p "$gobin"
        GOBIN="$gobin" go install "tailscale.com/cmd/derper@$OLD"
        mv "$gobin/derper" "$bin"
        rmdir "$gobin"
    fi
    version_ok "$bin" "$OLD" || { log "error: $bin -version: $("$bin" -version 2>&1 | head -n1)"; exit 1; }
}

install_new() {
    local bin="$DIR/derper-$NEW"
    if version_ok "$bin" "$NEW"; then
        log "derper $NEW present: $bin"
        return
    fi
    local setec gover src="$DIR/src-$NEW"
    # The setec version that tailscale.com@OLD requires, and the Go that NEW needs.
    setec=$(awk '$1 == "github.com/tailscale/setec" { print $2; exit }' "$(gomod_of "$OLD")")
    [[ -n "$setec" ]] || { log "error: no setec requirement in tailscale.com@$OLD"; exit 1; }
    gover=$(awk '$1 == "go" { print $2; exit }' "$(gomod_of "$NEW")")
    log "building derper $NEW (go $gover via GOTOOLCHAIN=auto, setec pinned to $setec)"
    mkdir -p "$src"
    # Hand-written: the one requirement and the setec pin. `-mod=mod` below adds what the
    # derper package graph needs to go.mod/go.sum and nothing else.
    cat >"$src/go.mod" <<MOD
module benchderper

go $gover

require tailscale.com $NEW

replace github.com/tailscale/setec => github.com/tailscale/setec $setec
MOD
    rm -f "$src/go.sum"
    (cd "$src" && GOTOOLCHAIN=auto GOFLAGS="-mod=mod -buildvcs=false" go build -o "$bin.tmp" tailscale.com/cmd/derper)
    mv "$bin.tmp" "$bin"
    version_ok "$bin" "$NEW" || { log "error: $bin -version: $("$bin" -version 2>&1 | head -n1)"; exit 1; }
}

install_old
install_new
for v in "$NEW" "$OLD"; do
    log "$v: $("$DIR/derper-$v" -version 2>&1 | head -n1)"
    [[ $print -eq 1 ]] && echo "$v $DIR/derper-$v"
done
exit 0
