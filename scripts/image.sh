#!/usr/bin/env bash
# Builds the Sluice node image offline (no registry): release binaries, the
# root filesystem from this machine's Debian packages (deploy/image/rootfs.sh),
# then podman build FROM scratch. Prints the image's size.
# Usage: sudo scripts/image.sh [TAG]     (default: the workspace version)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-deps.sh
need_root
install_packages
TAG=${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
echo "==> cargo build --release"
cargo build --release --locked \
    -p sluice-datapath --bin sluiced -p nestdb --bin nestdb-server \
    -p sluice-control --bin sluicectl --bin sluice-agent --bin sluice-cni --bin sluice-bootstrap
echo "==> root filesystem"
deploy/image/rootfs.sh target/release target/image
echo "==> podman build localhost/sluice:$TAG"
podman --cgroup-manager cgroupfs --runtime runc build -q \
    -f deploy/image/Containerfile -t "localhost/sluice:$TAG" target/image
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "localhost/sluice:$TAG"
