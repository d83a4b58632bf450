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
#   scripts/fuzz.sh list                   the targets
#
# New inputs go to fuzz/corpus-work/TARGET (not committed); crashes to
# fuzz/artifacts/TARGET/. Each crash becomes a unit test in the crate with
# the bug, and its input a file in fuzz/regressions/TARGET/ (replayed by
# `cargo test -p sluice-fuzz`).
set -euo pipefail
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

run() {
    local t=$1
    shift
    mkdir -p "corpus-work/$t" "artifacts/$t"
    local dict=()
    [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
    # New inputs land in the first directory; the committed corpus is read.
    "$BIN/$t" -artifact_prefix="artifacts/$t/" -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 ${dict[@]+"${dict[@]}"} "$@" "corpus-work/$t" "corpus/$t"
}

case "${1:-}" in
    build) build ;;
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
        "$BIN/$2" -merge=1 -use_counters=0 -max_len=2048 "$tmp" "corpus/$2" "corpus-work/$2"
        rm -rf "corpus/$2" && mv "$tmp" "corpus/$2"
        ;;
    list) printf '%s\n' "${TARGETS[@]}" ;;
    *)
        sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
