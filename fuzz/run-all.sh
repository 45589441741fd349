#!/usr/bin/env bash
# Runs every fuzz target (or those named in FUZZ_TARGETS) for SECONDS each (default 600),
# FUZZ_JOBS targets at a time (default 1), niced. New inputs go to a scratch directory first;
# afterwards only those that add coverage are merged into fuzz/corpus/<target>/, so the
# committed corpus stays small. Prints per target: runtime, executions, corpus size and any
# crash (the input is in fuzz/artifacts/<target>/: fix the bug, then commit the input to the
# corpus). Exits 1 if any target crashed.
#
#   fuzz/run-all.sh                 # every target, 10 minutes each, one at a time
#   FUZZ_JOBS=2 fuzz/run-all.sh 60  # one minute each, two at a time
#   FUZZ_TARGETS="http_head config_file" fuzz/run-all.sh 600
#
# Needs the nightly toolchain; installs cargo-fuzz into .tools/ when it is missing.
set -euo pipefail

SECONDS_PER_TARGET=${1:-600}
JOBS=${FUZZ_JOBS:-1}
CARGO_FUZZ_VERSION=0.13.2

root=$(cd "$(dirname "$0")/.." && pwd)
tools=$root/.tools
export PATH=$tools/bin:$PATH
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
cd "$root"

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools"
    nice -n 10 cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$tools"
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
work=$(mktemp -d "${TMPDIR:-/tmp}/derp-fuzz.XXXXXX")
echo "building $(echo $targets | wc -w) targets; logs in $work"
nice -n 15 cargo +nightly fuzz build

# Inputs larger than libFuzzer's default 4 KiB limit that a target needs to reach its checks.
extra_args() {
    case $1 in
        http_head) echo "-max_len=24576" ;; # heads over the 16 KiB cap
        *) echo "" ;;
    esac
}

run_one() {
    local t=$1 scratch=$work/$1 log=$work/$1.log start status
    mkdir -p "$scratch"
    start=$(date +%s)
    status=0
    # shellcheck disable=SC2046
    nice -n 15 cargo +nightly fuzz run "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 \
        $(extra_args "$t") >"$log" 2>&1 || status=$?
    echo "$(($(date +%s) - start)) $status" >"$work/$t.result"
    # Keep only inputs that add coverage to the committed corpus.
    # shellcheck disable=SC2046
    nice -n 15 cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "$scratch" -- -merge=1 \
        $(extra_args "$t") >"$work/$t.merge.log" 2>&1 || true
}

running=0
for t in $targets; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

crashed=0
printf '%-20s %8s %12s %8s  %s\n' target seconds execs corpus result
for t in $targets; do
    read -r secs status <"$work/$t.result"
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$t.log" | tail -1 | awk '{print $2}')
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    result=ok
    if [ "$status" != 0 ]; then
        crashed=1
        artifact=$(grep -o 'Test unit written to [^ ]*' "$work/$t.log" | tail -1 | awk '{print $5}')
        result="CRASH (exit $status) ${artifact:-see $work/$t.log}"
    fi
    printf '%-20s %8s %12s %8s  %s\n' "$t" "$secs" "${execs:-?}" "$corpus" "$result"
done
exit "$crashed"
