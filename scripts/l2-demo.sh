#!/usr/bin/env bash
# The main job on an embedded default, no NIC needed: installs what is
# needed, builds sluiced, creates two "pod" network namespaces wired to
# sluiced through veth pairs and DPDK af_packet ports, pings between them
# through the datapath, shows the datapath's counters, and stops cleanly.
# Usage: sudo scripts/l2-demo.sh   (the smaller example; the main job is scripts/demo.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-deps.sh
prepare_machine

echo "==> building sluiced and sluicectl (release)"
cargo build --release --locked -p sluice-datapath --bin sluiced -p sluice-control --bin sluicectl
BIN=target/release

WORK=$(mktemp -d /tmp/sluice-demo.XXXXXX)
PID=""
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    for n in a b; do
        ip netns del "sluice-demo-$n" 2>/dev/null || true
        ip link del "sldemo-$n" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> creating pod namespaces sluice-demo-a (10.250.0.1) and sluice-demo-b (10.250.0.2)"
i=1
for n in a b; do
    ip netns del "sluice-demo-$n" 2>/dev/null || true
    ip link del "sldemo-$n" 2>/dev/null || true
    ip netns add "sluice-demo-$n"
    ip link add "sldemo-$n" type veth peer name eth0 netns "sluice-demo-$n"
    ip link set "sldemo-$n" up
    ip -n "sluice-demo-$n" link set lo up
    ip -n "sluice-demo-$n" addr add "10.250.0.$i/24" dev eth0
    ip -n "sluice-demo-$n" link set eth0 up
    ip netns exec "sluice-demo-$n" ethtool -K eth0 tx off >/dev/null 2>&1 || true
    i=$((i + 1))
done

CPUS=$(nproc)
PMD_CORE=$((CPUS > 1 ? 1 : 0))
cat > "$WORK/sluiced.ini" <<INI
[coe]
node_type = 'BAREMETAL'

[nsx_node_agent]
ovs_bridge = br-int
ovs_uplink_port = pod-a

[datapath]
cores = $PMD_CORE
main_core = 0
file_prefix = sluice-demo
hugepages = auto
ctl_socket = $WORK/sluiced.ctl

[port:pod-a]
devargs = net_af_packet0,iface=sldemo-a

[port:pod-b]
devargs = net_af_packet1,iface=sldemo-b
INI
echo "==> configuration ($WORK/sluiced.ini):"
sed 's/^/    /' "$WORK/sluiced.ini"

echo "==> starting sluiced"
"$BIN/sluiced" --config "$WORK/sluiced.ini" > "$WORK/events" 2> "$WORK/log" &
PID=$!
for _ in $(seq 300); do
    grep -q '"event":"ready"' "$WORK/events" 2>/dev/null && break
    if ! kill -0 "$PID" 2>/dev/null; then cat "$WORK/log"; exit 1; fi
    sleep 0.1
done
grep -q '"event":"ready"' "$WORK/events" || { echo "sluiced did not become ready"; cat "$WORK/log"; exit 1; }
sed 's/^/    /' "$WORK/log"

echo "==> ping 10.250.0.2 from sluice-demo-a, through sluiced"
ip netns exec sluice-demo-a ping -c 5 -i 0.2 -W 5 10.250.0.2

if [ -S "$WORK/sluiced.ctl" ]; then
    echo "==> sluicectl pmd-stats-show"
    "$BIN/sluicectl" --socket "$WORK/sluiced.ctl" pmd-stats-show || true
    echo "==> sluicectl dump-ports"
    "$BIN/sluicectl" --socket "$WORK/sluiced.ctl" dump-ports || true
fi

echo "==> stopping sluiced (SIGTERM)"
kill -TERM "$PID"
wait "$PID"
PID=""
sed 's/^/    /' "$WORK/log" | tail -n 12
echo "==> final counters:"
grep '"event":"stopped"' "$WORK/events" | python3 -m json.tool | sed 's/^/    /'
echo "==> done: ping crossed the DPDK datapath; sluiced stopped cleanly"
