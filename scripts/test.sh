#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian 12 machine:
# installs what is needed, sets up hugepages, builds, tests.
# Usage: sudo scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-deps.sh
prepare_machine
export CARGO_TERM_COLOR=never
echo "==> cargo build (all targets)"
cargo build --workspace --all-targets --locked
rm -f target/tmp/skips.txt
echo "==> cargo test"
cargo test --workspace --locked "$@" 2>&1 | tee target/test.log
echo "==> nestdb-client end-to-end tests against nestdb-server (they ran against ovsdb-server above)"
NESTDB_TEST_SERVER="$PWD/target/debug/nestdb-server" \
    cargo test --locked -p nestdb-client --test ovsdb_e2e 2>&1 | tee -a target/test.log
# (The fuzz corpora and crash reproducers were replayed above as sluice-fuzz's plain tests.)
echo "==> fuzz targets: a short coverage-guided run of each (regression run)"
bash scripts/fuzz.sh ci "${FUZZ_SECONDS:-20}" 2>&1 | tee -a target/test.log
# Tests skip (with a printed reason) only when a prerequisite is missing.
if [ -s target/tmp/skips.txt ]; then
    echo "==> skipped parts (with reasons):"
    sed 's/^/    /' target/tmp/skips.txt
fi
