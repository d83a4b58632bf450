#!/usr/bin/env bash
# Pod-port driver comparison: iperf3 TCP between two pod network namespaces
# through sluiced, once per pod-port kind, ROUNDS times, kinds alternating.
#
# Each run: a fresh sluiced (one idle configured port, net_null: sluiced
# needs one) in its own "node" namespace; two pods; their ports added at
# run time with `port-add` (ofports 2 and 3); a patch-cable flow program
# (in_port=2 -> 3, 3 -> 2); `iperf3 -c` for DUR
# seconds from pod a to pod b; the receiver's Gbit/s is printed.
#
# Kinds:
#   af-packet  veth pair, host end opened with net_af_packet  (port-add iface=... driver=af-packet)
#   af-xdp     veth pair, host end opened with net_af_xdp     (port-add iface=... driver=af-xdp)
#   tap        net_tap interface created by sluiced, moved into the pod (port-add devargs=net_tap...)
#   virtio-user  virtio_user with vhost-kernel (needs /dev/vhost-net; skipped without it)
#   bridge     the baseline: the same two namespaces and veth pairs (pod end
#              set up as sluice-cni does: transmit checksum offload off),
#              their host ends joined by a Linux bridge instead of sluiced
#
# Not a test: numbers depend on the machine's load. Needs root, iperf3,
# ovs-appctl and a built sluiced (SLUICED=..., default target/debug/sluiced).
#
# Usage: scripts/pod-port-bench.sh [ROUNDS]   (env: KINDS, DUR, SLUICED, CORE)
set -euo pipefail

cd "$(dirname "$0")/.."
SLUICED=${SLUICED:-target/debug/sluiced}
ROUNDS=${1:-2}
DUR=${DUR:-5}
KINDS=${KINDS:-"af-packet af-xdp tap virtio-user bridge"}
CORE=${CORE:-$(awk '/Cpus_allowed_list/ {n=split($2,a,/[-,]/); print a[n]}' /proc/self/status)}
CTL=/tmp/slbench.ctl
DIR=$(mktemp -d /tmp/slbench.XXXXXX)
PID=

appctl() { ovs-appctl -t "$CTL" "$@"; }

cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    PID=
    for n in slb-node slb-a slb-b; do ip netns del "$n" 2>/dev/null || true; done
}
trap 'cleanup; rm -rf "$DIR"' EXIT

pod_addr() { # NS IFACE ADDR
    ip -n "$1" addr add "$3" dev "$2"
    ip -n "$1" link set "$2" up
    # af_packet copies frames as the kernel hands them: no partial checksums, no TSO.
    ip netns exec "$1" ethtool -K "$2" tx off >/dev/null 2>&1 || true
}

iperf() { # -> prints Gbit/s from pod a to pod b, or "skip: reason"
    ip netns exec slb-a ping -c 2 -W 5 10.210.0.2 >/dev/null || { echo "skip: no ping between the pods"; return; }
    ip netns exec slb-b iperf3 -s -1 -D -p 5399 >/dev/null
    sleep 0.5 # iperf3 -D returns before the server listens
    ip netns exec slb-a iperf3 -c 10.210.0.2 -p 5399 -t "$DUR" -J >"$DIR/iperf.json" 2>&1 \
        || { echo "skip: iperf3 failed: $(jq -r .error "$DIR/iperf.json" 2>/dev/null)"; return; }
    jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100' "$DIR/iperf.json"
}

bridge() { # the Linux bridge baseline
    ip -n slb-node link add slb-br type bridge
    ip -n slb-node link set slb-br up
    local i
    for p in a b; do
        ip link add "slb-$p-o" type veth peer name "slb-$p-i"
        ip link set "slb-$p-i" netns "slb-$p"
        ip link set "slb-$p-o" netns slb-node
        ip -n slb-node link set "slb-$p-o" master slb-br up
        [ "$p" = a ] && i=10.210.0.1/24 || i=10.210.0.2/24
        pod_addr "slb-$p" "slb-$p-i" "$i"
    done
    iperf
}

run() { # KIND -> prints Gbit/s or "skip: reason"
    local kind=$1
    cleanup
    for n in slb-node slb-a slb-b; do ip netns add "$n"; ip -n "$n" link set lo up; done
    if [ "$kind" = bridge ]; then bridge; return; fi
    cat >"$DIR/sluiced.ini" <<EOF
[coe]
node_type = 'BAREMETAL'
[nsx_node_agent]
ovs_bridge = br-int
[datapath]
cores = $CORE
main_core = 0
file_prefix = slbench
hugepages = auto
mbufs = 16384
ctl_socket = $CTL
[port:idle]
devargs = net_null0,no-rx=1
EOF
    rm -f "$CTL"
    ip netns exec slb-node "$SLUICED" --config "$DIR/sluiced.ini" >"$DIR/out.log" 2>"$DIR/err.log" &
    PID=$!
    for _ in $(seq 1 600); do
        grep -q '"ready"' "$DIR/out.log" 2>/dev/null && [ -S "$CTL" ] && break
        kill -0 "$PID" 2>/dev/null || { echo "skip: sluiced exited: $(tail -1 "$DIR/err.log")"; return; }
        sleep 0.1
    done
    [ -S "$CTL" ] || { echo "skip: sluiced not ready after 60 s: $(tail -1 "$DIR/err.log")"; return; }
    local i
    for p in a b; do
        case $kind in
        af-packet|af-xdp)
            ip link add "slb-$p-o" type veth peer name "slb-$p-i"
            ip link set "slb-$p-i" netns "slb-$p"
            ip link set "slb-$p-o" netns slb-node
            ip -n slb-node link set "slb-$p-o" up
            [ "$p" = a ] && i=10.210.0.1/24 || i=10.210.0.2/24
            pod_addr "slb-$p" "slb-$p-i" "$i"
            appctl port-add "pod-$p" "iface=slb-$p-o" "driver=$kind" >"$DIR/add.log" 2>&1 \
                || { echo "skip: port-add failed: $(tr "\n" " " <"$DIR/add.log")"; return; }
            ;;
        tap)
            appctl port-add "pod-$p" "devargs=net_tap_$p,iface=slb-$p-t" >/dev/null \
                || { echo "skip: port-add failed: $(tail -2 "$DIR/err.log" | tr "\n" " ")"; return; }
            ip -n slb-node link set "slb-$p-t" netns "slb-$p"
            [ "$p" = a ] && i=10.210.0.1/24 || i=10.210.0.2/24
            pod_addr "slb-$p" "slb-$p-t" "$i"
            ;;
        virtio-user)
            [ -c /dev/vhost-net ] || { echo "skip: no /dev/vhost-net (vhost_net module not available)"; return; }
            appctl port-add "pod-$p" "devargs=virtio_user_$p,path=/dev/vhost-net,iface=slb-$p-v,queue_size=1024" >/dev/null \
                || { echo "skip: port-add failed: $(tail -2 "$DIR/err.log" | tr "\n" " ")"; return; }
            ip -n slb-node link set "slb-$p-v" netns "slb-$p"
            [ "$p" = a ] && i=10.210.0.1/24 || i=10.210.0.2/24
            pod_addr "slb-$p" "slb-$p-v" "$i"
            ;;
        esac
    done
    appctl del-flows >/dev/null
    appctl add-flow "priority=10,in_port=2 actions=output:3" >/dev/null
    appctl add-flow "priority=10,in_port=3 actions=output:2" >/dev/null
    iperf
}

printf '%-12s' kind; for r in $(seq 1 "$ROUNDS"); do printf ' %12s' "run $r Gbit/s"; done; echo
declare -A res
for r in $(seq 1 "$ROUNDS"); do
    # Alternate the order between rounds (the machine's load drifts).
    if [ $((r % 2)) -eq 1 ]; then order=$KINDS; else order=$(echo "$KINDS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for k in $order; do run "$k" >"$DIR/res" 2>&1 || true; res[$k,$r]=$(tail -1 "$DIR/res"); cleanup; done
done
for k in $KINDS; do
    printf '%-12s' "$k"
    for r in $(seq 1 "$ROUNDS"); do printf ' %12s' "${res[$k,$r]}"; done
    echo
done
