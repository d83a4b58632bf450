#!/usr/bin/env bash
# Prepares a bare-metal node for the Sluice DaemonSet. Idempotent: every step
# checks the current state first and does nothing when it is already right.
# See deploy/README.md.
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
    cat <<EOF
Usage: $PROG [options] PCI_ADDRESS

Prepares this node for sluiced (run as root, on the node):
  1. reserves 2 MiB hugepages (vm.nr_hugepages, persisted in /etc/sysctl.d)
  2. mounts hugetlbfs on /dev/hugepages
  3. loads vfio-pci and binds the uplink NIC PCI_ADDRESS to it (dpdk-devbind.py)
  4. runs sluice-bootstrap install: the CNI plugin and configuration, the
     AppArmor profile deploy/apparmor/sluiced (loaded when AppArmor is on);
     without sluice-bootstrap, only the AppArmor profile
  5. labels the Kubernetes node sluice.io/node-type=baremetal (kubectl)

PCI_ADDRESS is the uplink NIC, e.g. 0000:01:00.0 (see: dpdk-devbind.py --status).
It must match [port:uplink] devargs in deploy/kubernetes/sluice-config.yaml.

Options:
  --dry-run          print the commands that would change the node, change nothing
  --hugepages N      number of 2 MiB hugepages to reserve (default: $HUGEPAGES)
  --node NAME        Kubernetes node name to label (default: $(hostname 2>/dev/null || echo '$HOSTNAME'))
  --no-label         do not label the node (label it from elsewhere)
  --force            bind the NIC even if it carries the default route or an
                     address (the node loses that connectivity until sluiced
                     takes over the node IP)
  -h, --help         this help
EOF
}

DRY_RUN=0
HUGEPAGES=1024
NODE=""
LABEL=1
FORCE=0
PCI=""

die() { echo "$PROG: $*" >&2; exit 2; }
note() { echo "==> $*"; }

# run CMD...: runs a command that changes the node, or prints it (--dry-run).
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# write_file PATH CONTENT: writes a file (or prints what it would write).
write_file() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+ cat > %q <<EOF\n%s\nEOF\n' "$1" "$2"
    else
        printf '%s\n' "$2" > "$1"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --hugepages) [ $# -ge 2 ] || die "--hugepages needs a number"; HUGEPAGES=$2; shift ;;
        --hugepages=*) HUGEPAGES=${1#*=} ;;
        --node) [ $# -ge 2 ] || die "--node needs a name"; NODE=$2; shift ;;
        --node=*) NODE=${1#*=} ;;
        --no-label) LABEL=0 ;;
        --force) FORCE=1 ;;
        -*) die "unknown option '$1' (try --help)" ;;
        *) [ -z "$PCI" ] || die "only one PCI address (got '$PCI' and '$1')"; PCI=$1 ;;
    esac
    shift
done

[ -n "$PCI" ] || { usage >&2; die "missing PCI_ADDRESS of the uplink NIC"; }
case "$HUGEPAGES" in
    ''|*[!0-9]*) die "--hugepages: '$HUGEPAGES' is not a number" ;;
esac
# Accept 01:00.0 and 0000:01:00.0; sysfs and dpdk-devbind use the long form.
if [[ "$PCI" =~ ^[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]]; then
    PCI="0000:$PCI"
fi
[[ "$PCI" =~ ^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]] \
    || die "'$PCI' is not a PCI address (expected DDDD:BB:DD.F, e.g. 0000:01:00.0)"
PCI=$(printf '%s' "$PCI" | tr 'A-F' 'a-f')
NODE=${NODE:-$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (hugepages, vfio-pci and driver binding need it), or use --dry-run"
fi
[ "$DRY_RUN" = 1 ] && note "dry run: commands that would change the node are printed with '+'"

# 1. Hugepages ---------------------------------------------------------------
have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
if [ "$have" -ge "$HUGEPAGES" ]; then
    note "hugepages: $have reserved (want $HUGEPAGES): ok"
else
    note "hugepages: reserving $HUGEPAGES x 2 MiB (have $have)"
    run sysctl -w "vm.nr_hugepages=$HUGEPAGES"
    if [ "$DRY_RUN" = 0 ]; then
        got=$(cat /proc/sys/vm/nr_hugepages)
        [ "$got" -ge "$HUGEPAGES" ] || die "only $got hugepages could be reserved (memory fragmented: reboot with hugepages=$HUGEPAGES on the kernel command line)"
    fi
    note "hugepages: restart the kubelet afterwards so it advertises hugepages-2Mi"
    # Persist only what we raised: a larger reservation made elsewhere
    # (kernel command line, another sysctl.d file) is left alone.
    sysctl_conf=/etc/sysctl.d/90-sluice-hugepages.conf
    note "hugepages: persisting in $sysctl_conf"
    write_file "$sysctl_conf" "vm.nr_hugepages = $HUGEPAGES"
fi

# 2. hugetlbfs ---------------------------------------------------------------
if awk '$2 == "/dev/hugepages" && $3 == "hugetlbfs" {found=1} END {exit !found}' /proc/mounts 2>/dev/null; then
    note "hugetlbfs: mounted on /dev/hugepages: ok"
else
    note "hugetlbfs: mounting on /dev/hugepages"
    run mkdir -p /dev/hugepages
    run mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
fi

# 3. vfio-pci and the uplink NIC ---------------------------------------------
dev=/sys/bus/pci/devices/$PCI
if [ -d /sys/module/vfio_pci ]; then
    note "vfio-pci: loaded: ok"
else
    note "vfio-pci: loading"
    run modprobe vfio-pci
fi
modules_conf=/etc/modules-load.d/sluice-vfio.conf
if [ "$(cat "$modules_conf" 2>/dev/null || true)" != "vfio-pci" ]; then
    note "vfio-pci: loading at boot ($modules_conf)"
    write_file "$modules_conf" "vfio-pci"
fi
if [ -z "$(ls -A /sys/kernel/iommu_groups 2>/dev/null || true)" ]; then
    msg="no IOMMU groups: enable the IOMMU (BIOS VT-d/AMD-Vi; kernel command line intel_iommu=on iommu=pt) and reboot"
    [ "$DRY_RUN" = 1 ] && note "warning: $msg" || die "$msg"
fi
if [ ! -e "$dev" ]; then
    msg="no PCI device $PCI on this node (list them: dpdk-devbind.py --status-dev net)"
    [ "$DRY_RUN" = 1 ] && note "warning: $msg" || die "$msg"
fi
driver=""
if [ -e "$dev/driver" ]; then
    driver=$(basename "$(readlink -f "$dev/driver")")
fi
if [ "$driver" = vfio-pci ]; then
    note "uplink $PCI: bound to vfio-pci: ok"
else
    # Refuse to cut the node off by accident: a NIC that carries an address
    # or the default route is in use by the kernel.
    for ifdir in "$dev"/net/*; do
        [ -e "$ifdir" ] || continue
        ifname=$(basename "$ifdir")
        if ip -o addr show dev "$ifname" 2>/dev/null | grep -qw inet \
            || ip route show default 2>/dev/null | grep -qw "dev $ifname"; then
            if [ "$FORCE" = 1 ] || [ "$DRY_RUN" = 1 ]; then
                note "warning: $ifname ($PCI) has an address or the default route; binding it removes them"
            else
                die "$ifname ($PCI) has an address or the default route: binding it to vfio-pci cuts that connectivity; use --force if sluiced takes over the node IP"
            fi
        fi
        run ip link set dev "$ifname" down
    done
    devbind=$(command -v dpdk-devbind.py || command -v dpdk-devbind || true)
    if [ -z "$devbind" ]; then
        [ "$DRY_RUN" = 1 ] || die "dpdk-devbind.py not found: apt-get install dpdk"
        devbind=dpdk-devbind.py
    fi
    note "uplink $PCI: binding to vfio-pci (was: ${driver:-no driver})"
    run "$devbind" --bind=vfio-pci "$PCI"
fi

# 4. CNI plugin, CNI configuration, AppArmor profile -------------------------
# sluice-bootstrap does this (the DaemonSet's init container runs the same
# binary): /opt/cni/bin/sluice (+ loopback, host-local if absent),
# /etc/cni/net.d/10-sluice.conflist when its version is newer,
# 99-loopback.conf if absent, the AppArmor profile (loaded when AppArmor is
# on); recorded for `sluice-bootstrap --uninstall`. Without the binary,
# only the AppArmor profile is handled here.
sb=${SLUICE_BOOTSTRAP:-}
if [ -z "$sb" ]; then
    for c in "$HERE/../target/release/sluice-bootstrap" "$HERE/../target/debug/sluice-bootstrap"; do
        [ -x "$c" ] && { sb=$c; break; }
    done
fi
[ -n "$sb" ] || sb=$(command -v sluice-bootstrap || true)
if [ -n "$sb" ]; then
    note "cni + apparmor: $sb install (sluice-cni taken from beside it)"
    run "$sb" install
else
    note "cni: sluice-bootstrap not found (build it: cargo build --release -p sluice-control, or set SLUICE_BOOTSTRAP); the DaemonSet's init container installs the CNI files"
    profile_src=$HERE/apparmor/sluiced
    if [ -d /sys/kernel/security/apparmor ] && command -v apparmor_parser >/dev/null; then
        if [ -f /etc/apparmor.d/sluiced ] && cmp -s "$profile_src" /etc/apparmor.d/sluiced \
            && grep -qx 'sluiced (enforce)' /sys/kernel/security/apparmor/profiles 2>/dev/null; then
            note "apparmor: profile sluiced loaded: ok"
        else
            note "apparmor: installing and loading profile sluiced"
            run install -m 0644 "$profile_src" /etc/apparmor.d/sluiced
            run apparmor_parser -r -W /etc/apparmor.d/sluiced
        fi
    else
        note "apparmor: not enabled on this node; remove the apparmor annotation from the DaemonSet, or enable AppArmor"
    fi
fi

# 5. Node label --------------------------------------------------------------
if [ "$LABEL" = 0 ]; then
    note "label: skipped (--no-label); run: kubectl label node $NODE sluice.io/node-type=baremetal --overwrite"
elif ! command -v kubectl >/dev/null && [ "$DRY_RUN" = 0 ]; then
    note "label: kubectl not found; run from a machine with cluster access: kubectl label node $NODE sluice.io/node-type=baremetal --overwrite"
else
    note "label: node $NODE"
    run kubectl label node "$NODE" sluice.io/node-type=baremetal --overwrite
fi

note "done: apply deploy/kubernetes/sluice-config.yaml, then deploy/kubernetes/sluice-daemonset.yaml"
