#!/usr/bin/env bash
# `podman kube play` of the DaemonSet's pod on one machine, in a node
# network namespace with a veth "NIC", from the built node image:
#   1. the Pod and ConfigMap are generated from deploy/kubernetes/ by
#      pod-from-daemonset.py (what changes and why is listed there);
#   2. nestdb-server runs on the "host" (its socket at the DaemonSet's
#      hostPath, under the fake host root) and gets a Node_Config row;
#   3. podman kube play runs the init container (sluice-bootstrap install
#      into the fake host root), sluiced (under sluice-bootstrap supervise)
#      and sluice-agent, with the manifest's capabilities, volumes and user;
#   4. every exec probe of the manifest is run with `podman exec` until it
#      passes (bounded): podman 4.3 runs probes only from systemd timers;
#   5. two containers are attached through the sluice CNI plugin the init
#      container installed (podman's CNI backend, in the node namespace, as
#      kubelet would call it) and ping and talk TCP through sluiced;
#   6. everything is removed (containers, pod, namespaces, processes, files);
#      the image stays in the podman storage for the next run.
# Usage: deploy/podman/kube-play.sh IMAGE BIN_DIR PODMAN_ROOT PODMAN_RUNROOT
#   IMAGE        e.g. localhost/sluice:0.1.0, present in PODMAN_ROOT
#   BIN_DIR      where nestdb-server is (it runs on the host)
# Needs root, podman, runc, busybox-static, ovsdb-client, python3-yaml.
set -euo pipefail
IMAGE=$1
BIN=$(cd "$2" && pwd)
PMROOT=$3
PMRUN=$4
REPO=$(cd "$(dirname "$0")/../.." && pwd)
KP_WAIT=${KP_WAIT:-120}
NODE=slkp-node
PEER=slkp-peer
W=$(mktemp -d /tmp/sluice-kube-play.XXXXXX)
H=$W/host
NESTDB_PID=

log() { echo "==> $*"; }

pm() {
    CONTAINERS_CONF=$W/containers.conf podman --root "$PMROOT" --runroot "$PMRUN" \
        --cgroup-manager cgroupfs --runtime runc "$@"
}
# podman in the node's network namespace (hostNetwork and the CNI plugin's
# host-side veths are there). nsenter, not `ip netns exec`: that one mounts
# a fresh /sys, which hides /sys/fs/cgroup from podman.
pmn() { CONTAINERS_CONF=$W/containers.conf nsenter --net=/run/netns/$NODE podman --root "$PMROOT" \
    --runroot "$PMRUN" --cgroup-manager cgroupfs --runtime runc "$@"; }

wait_for() { # what, command...
    local what=$1
    shift
    local i
    for i in $(seq $((KP_WAIT * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "kube-play: timed out after ${KP_WAIT}s waiting for $what; its last answer:" >&2
    "$@" >&2 || true
    return 1
}

cleanup() {
    local rc=$?
    set +e
    if [ $rc != 0 ] && [ -d "$W" ]; then
        echo "--- kube-play failed; container logs:" >&2
        for c in sluice-node-sluice-bootstrap sluice-node-sluiced sluice-node-sluice-agent; do
            echo "--- $c" >&2
            pm logs "$c" 2>&1 | tail -20 >&2
        done
        tail -5 "$W/nestdb.log" >&2 2>/dev/null
        pm ps -a --format '{{.Names}} {{.Status}}' >&2
        pm logs kp-b 2>&1 | tail -5 >&2
    fi
    local t0=$SECONDS
    # The CNI containers first (their DEL needs nestdb), then the pod.
    pmn rm -f -t 0 kp-a kp-b >/dev/null 2>&1
    pmn pod rm -a -f -t 0 >/dev/null 2>&1
    pm rm -a -f -t 0 >/dev/null 2>&1
    pm rmi -f localhost/sluice-bb:1 >/dev/null 2>&1
    pm volume prune -f >/dev/null 2>&1
    echo "==> cleaned up in $((SECONDS - t0)) s" >&2
    [ -n "$NESTDB_PID" ] && kill "$NESTDB_PID" 2>/dev/null && wait "$NESTDB_PID" 2>/dev/null
    ip netns del "$NODE" 2>/dev/null
    ip netns del "$PEER" 2>/dev/null
    rm -rf "$W"
    exit $rc
}
trap cleanup EXIT

ip netns del "$NODE" 2>/dev/null || true
ip netns del "$PEER" 2>/dev/null || true
log "node namespace $NODE: eth1 (192.168.71.1/24) <-> $PEER peer0 (192.168.71.2/24)"
ip netns add "$NODE"
ip netns add "$PEER"
ip -n "$NODE" link set lo up
ip -n "$PEER" link set lo up
ip -n "$NODE" link add eth1 type veth peer name peer0 netns "$PEER"
ip -n "$NODE" addr add 192.168.71.1/24 dev eth1
ip -n "$NODE" link set eth1 up
ip -n "$PEER" addr add 192.168.71.2/24 dev peer0
ip -n "$PEER" link set peer0 up
ip netns exec "$NODE" ethtool -K eth1 tx off rx off >/dev/null 2>&1 || true

mkdir -p "$H"/var/run/nestdb "$H"/var/run/sluice "$H"/opt/cni/bin "$H"/etc/cni/net.d \
    "$H"/etc/apparmor.d "$H"/var/lib/sluice/bootstrap "$H"/dev/vfio "$W/cni" "$W/ipam"
cat >"$W/containers.conf" <<CONF
[network]
network_backend = "cni"
cni_plugin_dirs = ["$H/opt/cni/bin", "/usr/lib/cni"]
network_config_dir = "$W/cni"
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
# The pod's infra container: busybox's sleep, from a local image (podman
# would build its pause image from catatonit, which Debian 12's podman
# does not pull in).
infra_image = "localhost/sluice-bb:1"
infra_command = "/bin/pause"
CONF
mkdir -p "$W/bb/bin"
cp /bin/busybox "$W/bb/bin/"
for a in sh ip cat sleep ping nc; do ln -s busybox "$W/bb/bin/$a"; done
printf '#!/bin/sh\nexec sleep 2147483647\n' >"$W/bb/bin/pause"
chmod +x "$W/bb/bin/pause"
tar -C "$W/bb" -cf "$W/bb.tar" .
pm import --change 'ENV PATH=/bin' --change 'CMD ["/bin/pause"]' "$W/bb.tar" localhost/sluice-bb:1 >/dev/null

log "nestdb-server on the host, socket at the DaemonSet's hostPath ($H/var/run/nestdb/nestdb-server.sock)"
SOCK=$H/var/run/nestdb/nestdb-server.sock
"$BIN/nestdb-server" "$W/node.db" --schema "$REPO/deploy/nestdb/sluice.ovsschema" \
    "--remote=punix:$SOCK" --unixctl "$W/nestdb.ctl" >"$W/nestdb.out" 2>"$W/nestdb.log" &
NESTDB_PID=$!
wait_for "nestdb-server" test -S "$SOCK"
MAC=$(ip netns exec "$NODE" cat /sys/class/net/eth1/address)
ovsdb-client --timeout=30 transact "unix:$SOCK" "[\"Sluice_Node\", {\"op\": \"insert\", \"table\": \"Node_Config\", \"row\": {
    \"node_name\": \"kp\", \"node_type\": \"BAREMETAL\", \"uplink_port\": \"uplink\",
    \"vtep_ip\": \"192.168.71.11\", \"pod_cidrs\": \"10.246.0.1/24\", \"node_ips\": \"192.168.71.1\",
    \"nodeport_min\": 30000, \"nodeport_max\": 32767, \"mtu\": 1500,
    \"external_ids\": [\"map\", [[\"node_mac\", \"$MAC\"], [\"vni\", \"1\"]]]}}]" >/dev/null

log "Pod and ConfigMap generated from deploy/kubernetes/"
HUGE=$(awk '$3 == "hugetlbfs" {print $2; exit}' /proc/mounts)
[ -n "$HUGE" ] || { HUGE=$W/hugepages; mkdir -p "$HUGE"; }
python3 "$REPO/deploy/podman/pod-from-daemonset.py" \
    --daemonset "$REPO/deploy/kubernetes/sluice-daemonset.yaml" \
    --config "$REPO/deploy/kubernetes/sluice-config.yaml" \
    --image "$IMAGE" --host-root "$H" --hugepages "$HUGE" \
    --ini datapath.file_prefix=slkp --ini datapath.hugepages=auto \
    --ini datapath.metrics_address=127.0.0.1:9476 \
    "$W/kube"

log "podman kube play (in $NODE)"
pmn kube play --configmap "$W/kube/configmap.yaml" "$W/kube/pod.yaml"
pm ps -a --format '{{.Names}} {{.Status}}'
[ -x "$H/opt/cni/bin/sluice" ] || { echo "kube-play: the init container did not install the CNI plugin" >&2; exit 1; }
[ -f "$H/etc/cni/net.d/10-sluice.conflist" ] || { echo "kube-play: no 10-sluice.conflist installed" >&2; exit 1; }
echo "    init container installed: $(ls "$H/opt/cni/bin" | tr '\n' ' ')and $(ls "$H/etc/cni/net.d" | tr '\n' ' ')"

log "capabilities as the manifest sets them"
for c in sluiced sluice-agent; do
    eff=$(pm inspect --format '{{.EffectiveCaps}}' "sluice-node-$c")
    echo "    $c: $eff"
done

log "probes of the manifest, run with podman exec"
python3 - "$W/kube/probes.json" >"$W/probes.sh" <<'PY'
import json, shlex, sys
for p in json.load(open(sys.argv[1])):
    print(p["container"], p["kind"], " ".join(shlex.quote(a) for a in p["command"]))
PY
while read -r container kind cmd; do
    eval "set -- $cmd"
    wait_for "$container's $kind ($*)" pm exec "sluice-node-$container" "$@"
    echo "    $container $kind passes: $*"
done <"$W/probes.sh"

log "two containers attached through the installed sluice CNI plugin (podman's CNI backend in $NODE)"
python3 - "$H/etc/cni/net.d/10-sluice.conflist" "$SOCK" "$W/ipam" >"$W/cni/10-sluice.conflist" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
for p in c["plugins"]:
    if p.get("type") == "sluice":
        p["nestdb"] = "unix:" + sys.argv[2]
        p["ipam"]["dataDir"] = sys.argv[3]
print(json.dumps(c))
PY
NET=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['name'])" "$W/cni/10-sluice.conflist")
for c in kp-a kp-b; do
    pmn run -d --name "$c" --network "$NET" localhost/sluice-bb:1 sleep 600 >/dev/null
done
IP_B=$(pm exec kp-b ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
echo "    kp-b has $IP_B"
pm exec kp-a ping -c 3 -W 5 "$IP_B"
pm exec -d kp-b sh -c 'echo hello-through-sluiced | nc -l -p 5000'
# (busybox nc may listen on IPv6: both tables.)
listening() { pm exec kp-b cat /proc/net/tcp /proc/net/tcp6 | awk '$2 ~ /:1388$/ && $4 == "0A" {f=1} END {exit !f}'; }
wait_for "kp-b listening on :5000" listening
reply=$(pm exec kp-a sh -c "nc $IP_B 5000 </dev/null")
echo "    kp-a <- kp-b over TCP: $reply"
[ "$reply" = hello-through-sluiced ] || { echo "kube-play: unexpected TCP reply '$reply'" >&2; exit 1; }
ports=$(pm exec sluice-node-sluiced sluicectl --socket /var/run/sluice/sluiced.ctl dump-ports 2>&1 || true)
echo "$ports" | sed 's/^/    /'
log "kube play: pod started from the image, probes pass, CNI pods forward through sluiced"
