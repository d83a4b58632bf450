#!/usr/bin/env bash
# The one command that reproduces benches/results/: Sluice side by side
# with OVS-DPDK and dpdk-testpmd (io, macswap), scale curves, control-plane
# timings, latency over net_memif (memif-gen; skip with --no-latency),
# table, JSON and PNG plots.
#
#   sudo scripts/bench.sh                 # the whole comparison (< 13 min on 2 cores, build included)
#   sudo scripts/bench.sh --quick --no-scale --scenarios l2:1000
#
# Extra arguments go to `pktgen run` (see `pktgen run --help`). It
# installs what it needs (Debian 12: dpdk, dpdk-dev for dpdk-testpmd,
# openvswitch-switch-dpdk, fonts-dejavu-core for the plot labels),
# reserves 2048 x 2 MiB hugepages, builds sluiced and pktgen in release
# mode and runs. Every daemon runs as a child of pktgen in a private
# directory with its own DPDK file prefix; pktgen stops exactly those.
# Cores: EAL/main threads on CPU 0, the one forwarding core on CPU 1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$(date +%s.%N)

if [ "$(id -u)" != 0 ]; then
    echo "$0: run as root (DPDK and hugepages need it): sudo $0 $*" >&2
    exit 2
fi
if [ "$(nproc)" -lt 2 ]; then
    echo "$0: needs at least 2 CPUs (one main core, one forwarding core); this machine has $(nproc)" >&2
    exit 2
fi

pkgs=(dpdk dpdk-dev libdpdk-dev openvswitch-switch-dpdk openvswitch-common fonts-dejavu-core
      pkg-config libclang-dev clang coreutils)
. scripts/setup-deps.sh
install_missing "${pkgs[@]}"
T1=$(date +%s.%N)
if ! command -v cargo >/dev/null; then
    echo "$0: cargo not found: install Rust (>= 1.80) with rustup first" >&2
    exit 2
fi
# The Debian package starts the system's own OVS; ours is private and
# never touches it, so it is left alone.

# 4 GiB of 2 MiB hugepages: the 1M-flow pcap preloads ~1.2M mbufs in
# sluiced, and OVS's default mbuf pool takes ~1 GiB.
want=2048
if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt "$want" ]; then
    echo "$want" > /proc/sys/vm/nr_hugepages || true
fi
if ! grep -qs hugetlbfs /proc/mounts; then
    mkdir -p /dev/hugepages
    mount -t hugetlbfs nodev /dev/hugepages || true
fi
echo "==> hugepages: $(awk '/HugePages_Free/ {print $2}' /proc/meminfo) free of $(cat /proc/sys/vm/nr_hugepages)"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
echo "==> building sluiced, pktgen and memif-gen (release)"
cargo build --release -p sluice-datapath --bin sluiced -p sluice-benches --bin pktgen --bin memif-gen
T2=$(date +%s.%N)

echo "==> running (results in benches/results/)"
mkdir -p benches/results
exec "$TARGET/release/pktgen" run \
    --sluiced "$TARGET/release/sluiced" \
    --testpmd "$(command -v dpdk-testpmd)" \
    --memif-gen "$TARGET/release/memif-gen" \
    --out-dir benches/results \
    --conditions "nproc=$(nproc); $(uptime | sed 's/.*load/load/')" \
    --started-at "$T0" \
    --install-seconds "$(awk "BEGIN {print $T1 - $T0}")" \
    --build-seconds "$(awk "BEGIN {print $T2 - $T1}")" \
    "$@"
