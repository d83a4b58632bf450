#!/usr/bin/env bash
# Builds the node image from already built binaries into a given podman
# storage, offline, and skips the build when an image of the same inputs
# is there: the tag is a hash of the six binaries, rootfs.sh and the
# Containerfile. Prints the image name on the last line.
# Usage: deploy/image/build.sh BIN_DIR PODMAN_ROOT PODMAN_RUNROOT [REPO]
#   (scripts/image.sh builds the release image into the default storage.)
set -euo pipefail
BIN=$(cd "$1" && pwd)
PMROOT=$2
PMRUN=$3
REPO=${4:-localhost/sluice-test}
HERE=$(cd "$(dirname "$0")" && pwd)
pm() { podman --root "$PMROOT" --runroot "$PMRUN" --cgroup-manager cgroupfs --runtime runc "$@"; }
BINARIES=(sluiced sluice-agent nestdb-server sluicectl sluice-cni sluice-bootstrap)
for b in "${BINARIES[@]}"; do
    [ -x "$BIN/$b" ] || { echo "build.sh: $BIN/$b is missing: build it first" >&2; exit 2; }
done
HASH=$( (cd "$BIN" && sha256sum "${BINARIES[@]}"; sha256sum "$HERE/rootfs.sh" "$HERE/Containerfile" | cut -d' ' -f1) | sha256sum | cut -c1-16)
IMG=$REPO:$HASH
if pm image exists "$IMG"; then
    echo "==> $IMG is up to date (same binaries, rootfs.sh and Containerfile): not rebuilt" >&2
else
    OUT=$(mktemp -d /tmp/sluice-image.XXXXXX)
    trap 'rm -rf "$OUT"' EXIT
    "$HERE/rootfs.sh" "$BIN" "$OUT" >&2
    pm build -q -f "$HERE/Containerfile" -t "$IMG" "$OUT" >&2
    # Older builds of this repository's test image: removed, the storage
    # keeps one.
    for old in $(pm images --format '{{.Repository}}:{{.Tag}}' "$REPO" | grep -vx "$IMG" || true); do
        pm rmi -f "$old" >/dev/null 2>&1 || true
    done
fi
echo "==> $IMG: $(pm image inspect --format '{{.Size}}' "$IMG") bytes" >&2
echo "$IMG"
