#!/usr/bin/env bash
# Coverage-guided fuzzing of Sluice on the stable toolchain: libFuzzer
# (from the libfuzzer-sys crate, which builds it from source with the C++
# compiler) linked into binaries whose Rust code is instrumented with
# LLVM's SanitizerCoverage through stable rustc flags (-C passes=sancov-module
# and -C llvm-args=-sanitizer-coverage-*), the flags cargo-fuzz passes, but
# without cargo-fuzz, whose default address sanitizer needs nightly.
#
# Usage:
#   scripts/fuzz.sh build                  build every target (into fuzz/target/)
#   scripts/fuzz.sh run TARGET [ARGS...]   fuzz one target; ARGS go to libFuzzer,
#                                          e.g. -runs=100000000 or -max_total_time=600
#   scripts/fuzz.sh ci [SECONDS]           build, then every target for SECONDS (20) each
#                                          (a fixed seed: CI tries the same mutations each time, not new ground),
#                                          starting from the committed corpus; any crash fails
#   scripts/fuzz.sh merge TARGET           minimise fuzz/corpus-work/TARGET into fuzz/corpus/TARGET
#   scripts/fuzz.sh campaign [LANES] [SECS] build, then run LANES (2) fuzzers at nice 19, each
#                                          picking the unfinished target with the fewest lanes on it,
#                                          then furthest from its goal (10^8 executions for
#                                          packet_path, 10^7 for the others; every lane runs the last)
#                                          for SECS (900) at a time, until all are reached; every
#                                          run is a row of fuzz/campaign.tsv (executions, coverage,
#                                          crash or not), whose sums are the campaign's figures
#   scripts/fuzz.sh list                   the targets
#
# New inputs go to fuzz/corpus-work/TARGET (not committed); crashes to
# fuzz/artifacts/TARGET/. Each crash becomes a unit test in the crate with
# the bug, and its input a file in fuzz/regressions/TARGET/ (replayed by
# `cargo test -p sluice-fuzz`). packet_path keeps one datapath from input to
# input (reset in between); `SLUICE_FUZZ_FRESH=1 fuzz/target/*/release/packet_path
# FILE` replays FILE on a new one, to tell whether a finding needs the state
# earlier inputs left.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/../fuzz"
export CARGO_INCREMENTAL=0
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=target/$TRIPLE/release
TARGETS=(packet_path control_rpc nestdb_rpc ini_config ofctl_flow)

build() {
    # The triple is explicit so that RUSTFLAGS reach only the target code,
    # not build scripts and proc macros. No LTO: with the workspace's thin
    # LTO, building the five instrumented binaries took over ten minutes on
    # a loaded 2-core VM.
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    RUSTFLAGS="-C passes=sancov-module \
        -C llvm-args=-sanitizer-coverage-level=4 \
        -C llvm-args=-sanitizer-coverage-inline-8bit-counters \
        -C llvm-args=-sanitizer-coverage-pc-table \
        -C llvm-args=-sanitizer-coverage-trace-compares \
        --cfg fuzzing -C debug-assertions -C overflow-checks -C codegen-units=4" \
        cargo build --release --locked -p sluice-fuzz --features libfuzzer --bins \
        --target "$TRIPLE" --target-dir target
}

# The longest input of each target (libFuzzer's -max_len; longer corpus
# files are truncated when read). Longer inputs cost more per execution and
# libFuzzer grows its inputs towards the limit, so each is what the target
# needs: packet_path 4 KiB (71 TCP SYNs of 57 bytes: enough to fill its
# 64-connection table; a frame is at most 2 KiB); nestdb_rpc and ini_config
# 4 KiB (a transaction of a dozen operations, a config file); control_rpc
# 8 KiB (past its framer's 4 KiB message limit); ofctl_flow 8 KiB.
max_len() {
    case $1 in
        packet_path | nestdb_rpc | ini_config) echo 4096 ;;
        *) echo 8192 ;;
    esac
}

run() {
    local t=$1
    shift
    mkdir -p "corpus-work/$t" "artifacts/$t"
    local dict=()
    [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
    # New inputs land in the first directory; the committed corpus is read.
    # ARGS come after the defaults: a -max_len there wins.
    "$BIN/$t" -artifact_prefix="artifacts/$t/" -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
        -print_final_stats=1 ${dict[@]+"${dict[@]}"} "$@" "corpus-work/$t" "corpus/$t"
}

goal() { if [ "$1" = packet_path ]; then echo 100000000; else echo 10000000; fi; }
total() { awk -F'\t' -v t="$1" '$3 == t { s += $4 } END { printf "%d", s }' campaign.tsv; }

# One lane of a campaign: until every target has its goal, take the
# unfinished target the fewest lanes are running, of those the one with the
# smallest share of its goal, fuzz it for $1 seconds and record the run.
lane() {
    local secs=$1 lane=$2
    while :; do
        local pick="" best=""
        # One lane chooses at a time (the lanes start together).
        {
            flock 9
            for t in "${TARGETS[@]}"; do
                local done_ goal_ lanes rank
                done_=$(total "$t")
                goal_=$(goal "$t")
                [ "$done_" -ge "$goal_" ] && continue
                # Lanes on it now, then the share of its goal done: the fewest
                # lanes first, so that lanes spread over the targets while
                # several are unfinished and all run the last one.
                lanes=$(find campaign.lock -maxdepth 1 -name "$t.*" | wc -l)
                rank=$((lanes * 1000000 + done_ * 1000 / goal_))
                if [ -z "$best" ] || [ "$rank" -lt "$best" ]; then pick=$t best=$rank; fi
            done
            # Every target has its goal.
            [ -z "$pick" ] && return 0
            # Lanes on one target share corpus-work/TARGET (libFuzzer reloads
            # the units the others add).
            mkdir "campaign.lock/$pick.$lane"
        } 9>campaign.lock/.choosing
        local log="artifacts/$pick/campaign-lane$lane.log" started result=ok
        started=$(date +%s)
        if ! nice -n 19 "$SELF" run "$pick" -max_total_time="$secs" >"$log" 2>&1; then
            # A finding, or a run that could not start (then stop: it would not start again).
            if grep -qE 'ERROR: libFuzzer|panicked' "$log"; then result=crash; else result=failed; fi
        fi
        local execs cov ft
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2 || true)
        ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2 || true)
        if [ "$result" = failed ]; then
            echo "fuzz target $pick did not run (log: fuzz/$log):" >&2
            tail -5 "$log" >&2
            rmdir "campaign.lock/$pick.$lane"
            return 1
        fi
        if [ "$result" = crash ]; then
            cp "$log" "artifacts/$pick/crash-$(date -u +%Y%m%dT%H%M%S).log"
        fi
        flock campaign.tsv printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git rev-parse --short HEAD)" "$pick" \
            "${execs:-0}" "$(($(date +%s) - started))" "${cov:-?}" "${ft:-?}" "$result" >>campaign.tsv
        rmdir "campaign.lock/$pick.$lane"
    done
}

case "${1:-}" in
    build) build ;;
    campaign)
        lanes=${2:-2}
        secs=${3:-900}
        build
        [ -f campaign.tsv ] || printf '#utc\tcommit\ttarget\texecutions\tseconds\tcov\tft\tresult\n' >campaign.tsv
        rm -rf campaign.lock && mkdir campaign.lock
        for t in "${TARGETS[@]}"; do mkdir -p "artifacts/$t"; done
        for l in $(seq 1 "$lanes"); do lane "$secs" "$l" & done
        wait
        for t in "${TARGETS[@]}"; do echo "$t: $(total "$t") of $(goal "$t") executions"; done
        ;;
    run)
        [ $# -ge 2 ] || { echo "usage: $0 run TARGET [libFuzzer args]" >&2; exit 2; }
        shift
        run "$@"
        ;;
    ci)
        secs=${2:-20}
        build
        failed=0
        for t in "${TARGETS[@]}"; do
            echo "==> fuzz $t for ${secs}s"
            mkdir -p "artifacts/$t"
            log="artifacts/$t/ci.log"
            if run "$t" -seed=1 -max_total_time="$secs" >"$log" 2>&1; then
                grep -E '^#[0-9]+[[:space:]]+DONE|stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$log" || true
            else
                echo "fuzz target $t FAILED (full log: fuzz/$log):"
                grep -A25 -E 'panicked|ERROR: libFuzzer' "$log" | head -n 60
                grep 'Test unit written' "$log" || true
                failed=1
            fi
        done
        exit "$failed"
        ;;
    merge)
        [ $# -eq 2 ] || { echo "usage: $0 merge TARGET" >&2; exit 2; }
        mkdir -p "corpus-work/$2"
        tmp=$(mktemp -d)
        # Edge coverage only (no hit-count buckets): a few hundred inputs, not thousands.
        # At most 2 KiB an input (the target's limit when lower) keeps the corpus small.
        ml=$(max_len "$2")
        "$BIN/$2" -merge=1 -use_counters=0 -max_len=$((ml < 2048 ? ml : 2048)) "$tmp" "corpus/$2" "corpus-work/$2"
        rm -rf "corpus/$2" && mv "$tmp" "corpus/$2"
        ;;
    list) printf '%s\n' "${TARGETS[@]}" ;;
    *)
        # The header comment ($0 is relative to where the script was started).
        sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
esac
