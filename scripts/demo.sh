#!/usr/bin/env bash
# The main job on an embedded default, no NIC needed: installs what is
# needed, builds Sluice, and brings up the two-node lab (scripts/lab.sh):
# two bare-metal "nodes" in network namespaces, each running nestdb-server,
# sluiced and sluice-agent as the DaemonSet does, joined by an underlay
# link; pods attached through sluice-cni exactly as kubelet calls it; a
# cluster writer puts the Nodes, the pods' endpoints and a Service into both
# nodes' nestdb with ovsdb-client. A pod on node a then reaches the
# Service's ClusterIP, served by a pod on node b over Geneve; the demo
# prints the datapath's view of it and tears everything down.
# Usage: sudo scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-deps.sh
prepare_machine

echo "==> building Sluice (release)"
cargo build --release --locked \
    -p sluice-datapath --bin sluiced -p nestdb --bin nestdb-server \
    -p sluice-control --bin sluicectl --bin sluice-agent --bin sluice-cni --bin sluice-bootstrap

. scripts/lab.sh
WORK=$(mktemp -d /tmp/sluice-lab.XXXXXX)
trap 'lab_down; rm -rf "$WORK"' EXIT
lab_up target/release "$WORK"
lab_check
lab_show
echo "==> done: a pod on node a reached a Service served on node b, over Geneve, through sluiced on both nodes"
