#!/usr/bin/env bash
# The two-node lab: two bare-metal "nodes" in network namespaces, each with
# nestdb-server, sluiced and sluice-agent as the DaemonSet runs them, joined
# by an underlay link; pods are network namespaces attached through
# sluice-cni exactly as kubelet calls it; a small cluster writer puts the
# Nodes, the pods' endpoints and a Service into both nodes' nestdb with
# ovsdb-client.
#
#   node sllab-a (192.168.60.1, pods 10.244.1.0/24) ── eth1 ══ eth1 ── node sllab-b (192.168.60.2, pods 10.244.2.0/24)
#     pod a1 10.244.1.5                                                     pod b1 10.244.2.7 (web, :8080)
#   Service web: ClusterIP 10.96.0.10:80 -> b1:8080
#
# Sourced by scripts/demo.sh and control/tests/lab.rs; every function is
# idempotent and `lab_down` removes everything `lab_up` made, also after a
# failure half-way.
#   lab_up BIN_DIR WORK_DIR   bring it up (WORK_DIR holds configs, logs, sockets)
#   lab_check                  assert pod-to-pod, cross-node and Service traffic
#   lab_show                   print the datapath's view (services, trace, tunnels, PMDs, metrics)
#   lab_crash                  SIGKILL node a's sluiced: its address comes back on eth1
#   lab_down                   tear it down
set -euo pipefail

LAB_NODES=(a b)
declare -A LAB_NODE_IP=([a]=192.168.60.1 [b]=192.168.60.2)
# The VTEPs have their own addresses on the underlay (NSX's TEP IPs): the
# node's address lives on the host port, where the kernel answers for it.
# LAB_VTEP_IS_NODE_IP=1: each VTEP uses its node's address instead (the
# local stack answers ARP and ping for it; ARP replies, TCP and UDP other
# than Geneve still reach the host kernel).
declare -A LAB_VTEP_IP=([a]=192.168.60.11 [b]=192.168.60.12)
if [ "${LAB_VTEP_IS_NODE_IP:-0}" = 1 ]; then
    LAB_VTEP_IP=([a]=192.168.60.1 [b]=192.168.60.2)
fi
LAB_NODE_TCP_PORT=7070
declare -A LAB_POD_CIDR=([a]=10.244.1.0/24 [b]=10.244.2.0/24)
declare -A LAB_POD=([a]=a1 [b]=b1)
declare -A LAB_POD_IP=([a]=10.244.1.5 [b]=10.244.2.7)
LAB_SVC_IP=10.96.0.10
LAB_SVC_PORT=80
LAB_TARGET_PORT=8080
LAB_WAIT=${LAB_WAIT:-60}

lab_log() { echo "==> $*"; }

# Waits (bounded) until the command succeeds.
lab_wait() {
    local what=$1
    shift
    local i
    for i in $(seq $((LAB_WAIT * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "lab: timed out after ${LAB_WAIT}s waiting for $what" >&2
    return 1
}

lab_ovsdb() { # node, JSON operations after the database name
    ovsdb-client --timeout=30 transact "unix:$LAB_WORK/$1/nestdb.sock" "[\"Sluice_Node\", $2]"
}

lab_down() {
    local n
    for f in "${LAB_WORK:-/nonexistent}"/*.pid "${LAB_WORK:-/nonexistent}"/*/*.pid; do
        [ -f "$f" ] || continue
        kill -TERM "$(cat "$f")" 2>/dev/null || true
    done
    for f in "${LAB_WORK:-/nonexistent}"/*.pid "${LAB_WORK:-/nonexistent}"/*/*.pid; do
        [ -f "$f" ] || continue
        local pid
        pid=$(cat "$f")
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    # A datapath whose supervisor was killed: stop it too.
    if [ -n "${LAB_WORK:-}" ]; then
        pkill -TERM -f "sluiced --config $LAB_WORK/" 2>/dev/null || true
        for _ in $(seq 100); do pgrep -f "sluiced --config $LAB_WORK/" >/dev/null || break; sleep 0.1; done
        pkill -KILL -f "sluiced --config $LAB_WORK/" 2>/dev/null || true
    fi
    for n in "${LAB_NODES[@]}"; do
        ip netns del "sllab-$n-${LAB_POD[$n]}" 2>/dev/null || true
        ip netns del "sllab-$n" 2>/dev/null || true
    done
    ip link del sllab-ula 2>/dev/null || true
}

# Starts a background process, recording its pid in $LAB_WORK/<name>.pid.
lab_spawn() { # name, command...
    local name=$1
    shift
    "$@" >"$LAB_WORK/$name.out" 2>"$LAB_WORK/$name.log" &
    echo $! >"$LAB_WORK/$name.pid"
}

lab_up() {
    LAB_BIN=$(cd "$1" && pwd)
    LAB_WORK=$2
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    mkdir -p "$LAB_WORK"
    lab_down
    local cpus pmd
    cpus=$(nproc)
    pmd=$((cpus > 1 ? 1 : 0))

    lab_log "underlay: sllab-a eth1 <-> sllab-b eth1"
    for n in "${LAB_NODES[@]}"; do
        ip netns add "sllab-$n"
        ip -n "sllab-$n" link set lo up
    done
    ip link add sllab-ula type veth peer name sllab-ulb
    ip link set sllab-ula netns sllab-a name eth1
    ip link set sllab-ulb netns sllab-b name eth1
    for n in "${LAB_NODES[@]}"; do
        ip -n "sllab-$n" addr add "${LAB_NODE_IP[$n]}/24" dev eth1
        ip -n "sllab-$n" link set eth1 up
        ip netns exec "sllab-$n" ethtool -K eth1 tx off rx off >/dev/null 2>&1 || true
        mkdir -p "$LAB_WORK/$n"
    done

    for n in "${LAB_NODES[@]}"; do
        local w=$LAB_WORK/$n
        lab_log "node $n: nestdb-server"
        rm -f "$w/node.db"
        lab_spawn "$n/nestdb" "$LAB_BIN/nestdb-server" "$w/node.db" \
            --schema "$repo/deploy/nestdb/sluice.ovsschema" \
            "--remote=punix:$w/nestdb.sock" --unixctl "$w/nestdb.ctl"
        lab_wait "nestdb-server of $n" test -S "$w/nestdb.sock"

        lab_log "node $n: sluiced (uplink eth1, host port slhost: the node's address moves onto it)"
        cat >"$w/sluiced.ini" <<INI
[coe]
node_type = 'BAREMETAL'
[nsx_node_agent]
ovs_bridge = br-int
ovs_uplink_port = uplink
[datapath]
cores = $pmd
main_core = 0
file_prefix = sllab-$n
hugepages = auto
mbufs = 16384
ctl_socket = $w/sluiced.ctl
host_port = host
metrics_address = 127.0.0.1:9476
[port:uplink]
devargs = net_af_packet0,iface=eth1
ofport = 1
[port:host]
devargs = net_tap0,iface=slhost
ofport = 2
INI
        # As in the DaemonSet: under sluice-bootstrap supervise, which puts
        # the node's address back on eth1 whenever sluiced exits.
        lab_spawn "$n/sluiced" ip netns exec "sllab-$n" "$LAB_BIN/sluice-bootstrap" \
            --state-dir "$w/bootstrap" --node-if eth1 --host-if slhost supervise -- \
            "$LAB_BIN/sluiced" --config "$w/sluiced.ini"
        lab_wait "sluiced of $n to be ready" grep -q '"event":"ready"' "$w/sluiced.out"

        lab_log "node $n: sluice-agent"
        local mport=9478
        [ "$n" = b ] && mport=9479
        lab_spawn "$n/agent" "$LAB_BIN/sluice-agent" --db "unix:$w/nestdb.sock" --ctl "$w/sluiced.ctl" \
            --metrics-address "127.0.0.1:$mport"
    done

    lab_log "cluster writer: Nodes into both nestdbs"
    for n in "${LAB_NODES[@]}"; do
        local mac gw other
        mac=$(ip netns exec "sllab-$n" cat /sys/class/net/eth1/address)
        gw=${LAB_POD_CIDR[$n]%.0/24}.1
        lab_ovsdb "$n" "{\"op\": \"insert\", \"table\": \"Node_Config\", \"row\": {
            \"node_name\": \"$n\", \"node_type\": \"BAREMETAL\", \"uplink_port\": \"uplink\",
            \"vtep_ip\": \"${LAB_VTEP_IP[$n]}\", \"pod_cidrs\": \"${gw}/24\",
            \"node_ips\": \"${LAB_NODE_IP[$n]}\", \"nodeport_min\": 30000, \"nodeport_max\": 32767,
            \"mtu\": 1500, \"external_ids\": [\"map\", [[\"node_mac\", \"$mac\"], [\"vni\", \"1\"]]]}}" >/dev/null
        for other in "${LAB_NODES[@]}"; do
            [ "$other" = "$n" ] && continue
            lab_ovsdb "$n" "{\"op\": \"insert\", \"table\": \"Remote_Node\", \"row\": {
                \"name\": \"$other\", \"vtep_ip\": \"${LAB_VTEP_IP[$other]}\",
                \"pod_cidrs\": \"${LAB_POD_CIDR[$other]}\", \"node_ips\": \"${LAB_NODE_IP[$other]}\"}}" >/dev/null
        done
    done

    lab_log "pods attached through sluice-cni (CNI ADD, as kubelet calls it)"
    for n in "${LAB_NODES[@]}"; do
        lab_cni_add "$n" "${LAB_POD[$n]}"
    done

    lab_log "cluster writer: Service web (ClusterIP $LAB_SVC_IP:$LAB_SVC_PORT) with its endpoint b1:$LAB_TARGET_PORT"
    for n in "${LAB_NODES[@]}"; do
        local local_ep=false
        [ "$n" = b ] && local_ep=true
        lab_ovsdb "$n" "{\"op\": \"insert\", \"table\": \"Service_Port\", \"uuid-name\": \"sp\", \"row\": {
                \"name\": \"http\", \"protocol\": \"TCP\", \"port\": $LAB_SVC_PORT, \"target_port\": $LAB_TARGET_PORT}},
            {\"op\": \"insert\", \"table\": \"Service\", \"uuid-name\": \"svc\", \"row\": {
                \"name\": \"web\", \"namespace\": \"default\", \"type\": \"ClusterIP\",
                \"cluster_ips\": \"$LAB_SVC_IP\", \"ports\": [\"named-uuid\", \"sp\"],
                \"session_affinity\": \"None\", \"internal_traffic_policy\": \"Cluster\",
                \"external_traffic_policy\": \"Cluster\"}},
            {\"op\": \"insert\", \"table\": \"Endpoint\", \"row\": {
                \"service\": [\"named-uuid\", \"svc\"], \"ip\": \"${LAB_POD_IP[b]}\",
                \"ports\": [\"map\", [[\"http\", $LAB_TARGET_PORT]]], \"ready\": true, \"serving\": true,
                \"terminating\": false, \"node_name\": \"b\", \"is_local\": $local_ep}}" >/dev/null
    done

    lab_log "node b's kernel serves TCP on ${LAB_NODE_IP[b]}:$LAB_NODE_TCP_PORT (the node's own address, on its host port)"
    lab_spawn "b/node-tcp" ip netns exec "sllab-b" python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('${LAB_NODE_IP[b]}', $LAB_NODE_TCP_PORT)); s.listen(16)
while True:
    c, a = s.accept(); c.sendall(('node b to %s\\n' % a[0]).encode()); c.close()
"
    lab_wait "node b's kernel to listen on :$LAB_NODE_TCP_PORT" \
        bash -c "ip netns exec sllab-b ss -Hltn 'sport = :$LAB_NODE_TCP_PORT' | grep -q LISTEN"

    lab_log "pod b1 serves HTTP-ish on :$LAB_TARGET_PORT (answers with the client address it saw)"
    lab_spawn "b/web" ip netns exec "sllab-b-b1" python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', $LAB_TARGET_PORT)); s.listen(16)
while True:
    c, a = s.accept(); c.sendall(('hello from b1 to %s\n' % a[0]).encode()); c.close()
"
}

# CNI ADD for pod $2 on node $1: a network namespace, then sluice-cni with
# the CNI_* variables and the network configuration on stdin.
lab_cni_add() {
    local n=$1 pod=$2 ns="sllab-$1-$2" w=$LAB_WORK/$1
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    cat >"$w/net.conflist" <<CONF
{"cniVersion": "1.0.0", "name": "sluice", "type": "sluice",
 "nestdb": "unix:$w/nestdb.sock", "portUpTimeoutSeconds": $LAB_WAIT,
 "ipam": {"type": "host-local", "ranges": [[{"subnet": "${LAB_POD_CIDR[$n]}"}]],
          "dataDir": "$w/ipam"}}
CONF
    # host-local hands out .2 first; the lab pins the pod's address.
    local conf
    conf=$(python3 -c "
import json,sys
c = json.load(open('$w/net.conflist'))
c['ipam']['ranges'][0][0]['rangeStart'] = c['ipam']['ranges'][0][0]['rangeEnd'] = '${LAB_POD_IP[$n]}'
print(json.dumps(c))")
    echo "$conf" | ip netns exec "sllab-$n" env CNI_COMMAND=ADD CNI_CONTAINERID="lab-$pod" \
        CNI_NETNS="/var/run/netns/$ns" CNI_IFNAME=eth0 CNI_PATH="$LAB_BIN:/usr/lib/cni" \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod" \
        "$LAB_BIN/sluice-cni" >"$w/cni-$pod.json"
}

# ping that fails on duplicate answers (ping itself only reports them).
lab_ping() { # netns, address
    local out
    out=$(ip netns exec "$1" ping -c 3 -i 0.2 -W 5 "$2") || { echo "$out"; return 1; }
    echo "$out"
    if grep -q 'DUP!' <<<"$out"; then
        echo "lab: duplicate answers from $2 (seen in $1)" >&2
        return 1
    fi
}

lab_check() {
    local reply
    lab_log "pod a1 -> pod b1 (${LAB_POD_IP[b]}): across the nodes over Geneve"
    # The first packets wait for the VTEPs' neighbour resolution.
    lab_wait "a first answer from b1" ip netns exec sllab-a-a1 ping -c 1 -W 1 "${LAB_POD_IP[b]}"
    lab_ping sllab-a-a1 "${LAB_POD_IP[b]}"
    lab_log "node a -> node b (${LAB_NODE_IP[b]}): the nodes' own addresses through the host ports"
    lab_wait "a first answer from node b" ip netns exec sllab-a ping -c 1 -W 1 "${LAB_NODE_IP[b]}"
    lab_ping sllab-a "${LAB_NODE_IP[b]}"
    lab_log "node a -> node b (${LAB_NODE_IP[b]}:$LAB_NODE_TCP_PORT): TCP to the node's kernel through the host ports"
    reply=$(ip netns exec sllab-a python3 -c "
import socket
s = socket.create_connection(('${LAB_NODE_IP[b]}', $LAB_NODE_TCP_PORT), timeout=$LAB_WAIT)
print(s.recv(100).decode().strip())")
    echo "    $reply"
    [ "$reply" = "node b to ${LAB_NODE_IP[a]}" ] || {
        echo "lab: unexpected reply from node b's kernel '$reply'" >&2
        return 1
    }
    lab_log "pod a1 -> Service web ($LAB_SVC_IP:$LAB_SVC_PORT): served by b1 over Geneve"
    reply=$(ip netns exec sllab-a-a1 python3 -c "
import socket
s = socket.create_connection(('$LAB_SVC_IP', $LAB_SVC_PORT), timeout=$LAB_WAIT)
print(s.recv(100).decode().strip())")
    echo "    $reply"
    [ "$reply" = "hello from b1 to ${LAB_POD_IP[a]}" ] || {
        echo "lab: unexpected Service reply '$reply'" >&2
        return 1
    }
}

lab_show() {
    local ctl=$LAB_WORK/a/sluiced.ctl
    lab_log "node a: sluicectl dump-services"
    "$LAB_BIN/sluicectl" --socket "$ctl" dump-services
    lab_log "node a: sluicectl trace of a1 -> $LAB_SVC_IP:$LAB_SVC_PORT"
    "$LAB_BIN/sluicectl" --socket "$ctl" trace \
        "in_port=3,tcp,tcp_flags=+syn,nw_src=${LAB_POD_IP[a]},nw_dst=$LAB_SVC_IP,tp_src=40000,tp_dst=$LAB_SVC_PORT" || true
    lab_log "node a: sluicectl dump-tunnels"
    "$LAB_BIN/sluicectl" --socket "$ctl" dump-tunnels
    lab_log "node a: sluicectl pmd-stats-show"
    "$LAB_BIN/sluicectl" --socket "$ctl" pmd-stats-show
    lab_log "node a: metrics excerpt (http://127.0.0.1:9476/metrics in sllab-a)"
    ip netns exec sllab-a bash -c 'exec 3<>/dev/tcp/127.0.0.1/9476; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' |
        grep -E '^sluice_(node_generation|vtep_tx_packets_total|service_endpoint_connections_total|pmd_rx_packets_total)' || true
    lab_log "node a: sluice-agent metrics excerpt (http://127.0.0.1:9478/metrics)"
    local agent
    agent=$(bash -c 'exec 3<>/dev/tcp/127.0.0.1/9478; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' | sed '1,/^\r$/d')
    echo "$agent" | grep -E '^sluice_agent_(commits_total|generation|row_errors|sync_seconds_count)' || true
    if command -v promtool >/dev/null; then
        echo "$agent" | promtool check metrics && echo "    promtool check metrics: the agent's exposition is valid"
    fi
}

lab_crash() {
    local pid
    pid=$(pgrep -f "^$LAB_BIN/sluiced --config $LAB_WORK/a/sluiced.ini" | head -1)
    [ -n "$pid" ] || { echo "lab: node a's sluiced is not running" >&2; return 1; }
    lab_log "SIGKILL node a's sluiced (pid $pid): its host port dies with the node's address on it"
    local t0
    t0=$(date +%s%N)
    kill -KILL "$pid"
    lab_wait "node a's address back on eth1" \
        bash -c "ip -n sllab-a -4 addr show dev eth1 | grep -q '${LAB_NODE_IP[a]}/'"
    echo "    back on eth1 after $((($(date +%s%N) - t0) / 1000000)) ms"
    lab_log "node b -> node a (${LAB_NODE_IP[a]}) from the underlay"
    lab_wait "node a answering from the underlay" ip netns exec sllab-b ping -c 1 -W 1 "${LAB_NODE_IP[a]}"
    lab_ping sllab-b "${LAB_NODE_IP[a]}"
    if ip netns exec sllab-a tc filter show dev eth1 ingress | grep -q 'pref 491[56] bpf'; then
        echo "lab: node a's eth1 still drops IPv4/ARP at ingress after the move back" >&2
        return 1
    fi
}
