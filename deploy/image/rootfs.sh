#!/usr/bin/env bash
# Builds the Sluice node image's root filesystem from this machine's
# Debian 12 packages, offline: the binaries, exactly the shared libraries
# they load (ldd closure), the DPDK drivers sluiced may be configured with
# (and their libraries), ip(8) for the host path, ovs-appctl for operators,
# the CNI reference plugins the bootstrap installs when the host lacks
# them, the node schema and the AppArmor profile. Merged-usr (lib -> usr/lib:
# DPDK aborts when its libraries are loaded twice under two paths).
#
# Usage: deploy/image/rootfs.sh BIN_DIR OUT_DIR
#   BIN_DIR  where sluiced, sluice-agent, nestdb-server, sluicectl,
#            sluice-cni and sluice-bootstrap are (target/release)
#   OUT_DIR  created (emptied first); then
#            podman build -f deploy/image/Containerfile -t localhost/sluice:TAG OUT_DIR
set -euo pipefail
BIN=$1
OUT=$2
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BINARIES=(sluiced sluice-agent nestdb-server sluicectl sluice-cni sluice-bootstrap)
# DPDK drivers: virtual devices (pod ports, host port, tests), buses and
# mempools, and the PCI NIC drivers of common bare-metal NICs that need no
# vendor library beyond Debian's (mlx5 needs rdma-core: added below).
PMDS_DIR=/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0
PMDS=(bus_pci bus_vdev bus_auxiliary mempool_ring mempool_stack
      net_af_packet net_af_xdp net_tap net_virtio net_memif net_null net_ring net_pcap net_vhost
      net_i40e net_iavf net_ice net_ixgbe net_e1000 net_igc net_bnxt net_mlx5 common_mlx5 net_ena net_vmxnet3)
TOOLS=(/usr/sbin/ip /usr/sbin/tc /usr/bin/ovs-appctl)
CNI=(/usr/lib/cni/host-local /usr/lib/cni/loopback)

for b in "${BINARIES[@]}"; do
    [ -x "$BIN/$b" ] || { echo "rootfs.sh: $BIN/$b is missing: build it first (cargo build --release)" >&2; exit 2; }
done
rm -rf "$OUT"
mkdir -p "$OUT/rootfs"
R=$OUT/rootfs
mkdir -p "$R"/usr/{bin,sbin,lib,lib64,local/bin} "$R"/usr/lib/x86_64-linux-gnu \
    "$R"/etc "$R"/tmp "$R"/var/run "$R"/var/lib "$R"/usr/share/sluice "$R"/opt/cni/bin
ln -s usr/bin "$R/bin"
ln -s usr/sbin "$R/sbin"
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"
chmod 1777 "$R/tmp"

# Copies a file to the same path under the root (resolving symlinks into
# the merged-usr layout), keeping the link names the loader looks up.
put() {
    local f=$1 real dest
    case "$f" in /lib/*|/lib64/*|/bin/*|/sbin/*) f=/usr$f ;; esac
    dest=$R$f
    [ -e "$dest" ] && return 0
    mkdir -p "$(dirname "$dest")"
    if [ -L "$f" ]; then
        # The link's own target first (itself maybe a link: every name of
        # the chain must exist in the image, e.g. libX.so.23 ->
        # dpdk/pmds-23.0/libX.so.23 -> libX.so.23.0).
        real=$(readlink "$f")
        case "$real" in /*) ;; *) real=$(realpath -s "$(dirname "$f")/$real") ;; esac
        put "$real"
        ln -sf "$(readlink "$f")" "$dest" 2>/dev/null || cp -a "$(readlink -f "$f")" "$dest"
    else
        cp -a "$f" "$dest"
    fi
}

# A binary and every library it loads.
with_libs() {
    put "$1"
    ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | while read -r l; do
        put "$l"
    done
}

for b in "${BINARIES[@]}"; do
    install -m 0755 "$BIN/$b" "$R/usr/local/bin/$b"
    strip --strip-debug "$R/usr/local/bin/$b" 2>/dev/null || true
    ldd "$BIN/$b" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | while read -r l; do put "$l"; done
done
for t in "${TOOLS[@]}"; do with_libs "$t"; done
for c in "${CNI[@]}"; do install -m 0755 "$c" "$R/opt/cni/bin/$(basename "$c")"; done
mkdir -p "$R$PMDS_DIR"
for p in "${PMDS[@]}"; do
    for f in "$PMDS_DIR/librte_$p.so"*; do
        [ -e "$f" ] || continue
        cp -a "$f" "$R$PMDS_DIR/"
        real=$(readlink -f "$f")
        with_libs "$real"
    done
done
cp "$REPO/deploy/nestdb/sluice.ovsschema" "$R/usr/share/sluice/sluice.ovsschema"
mkdir -p "$R/usr/share/sluice/apparmor"
cp "$REPO"/deploy/apparmor/* "$R/usr/share/sluice/apparmor/"
# Who the processes run as: root (sluiced needs its capabilities; the
# AppArmor profile confines it), no login.
cat >"$R/etc/passwd" <<'P'
root:x:0:0:root:/root:/usr/sbin/nologin
P
cat >"$R/etc/group" <<'G'
root:x:0:
G
echo "sluice node image root filesystem in $R: $(du -sh "$R" | cut -f1)"
