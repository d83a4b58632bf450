#!/usr/bin/env bash
# Installs what Sluice needs on Debian 12 (idempotent) and reserves
# hugepages when the kernel allows it. Sourced by demo.sh, l2-demo.sh,
# test.sh and bench.sh.
set -euo pipefail

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: run as root (DPDK ports, namespaces and hugepages need it): sudo $0" >&2
        exit 2
    fi
}

# Installs those of the Debian packages "$@" that are not installed yet.
install_missing() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # tshark asks whether non-root users may capture: answer no.
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

install_packages() {
    local pkgs=(
        build-essential pkg-config libclang-dev clang
        libdpdk-dev dpdk
        containernetworking-plugins podman runc busybox-static
        iproute2 iputils-ping ethtool util-linux procps
        openvswitch-common openvswitch-switch openvswitch-switch-dpdk python3-pip python3-yaml
        tshark netcat-openbsd
        prometheus
        apparmor containernetworking-plugins
    )
    install_missing "${pkgs[@]}"
    if ! command -v kubernetes-validate >/dev/null; then
        echo "==> installing kubernetes-validate (PyPI)"
        python3 -m pip install --quiet --break-system-packages kubernetes-validate ||
            python3 -m pip install --quiet kubernetes-validate ||
            echo "warning: pip install kubernetes-validate failed; the manifest test will record the skip"
    fi
    if ! python3 -c 'import ovs' 2>/dev/null; then
        echo "==> installing the Python ovs IDL (PyPI: ovs)"
        python3 -m pip install --quiet ovs || echo "warning: pip install ovs failed; the Python IDL interop test will say so"
    fi
    if ! command -v cargo >/dev/null; then
        echo "$0: cargo not found: install Rust (>= 1.80) with rustup first" >&2
        exit 2
    fi
}

setup_hugepages() {
    # 1024 x 2 MiB; DPDK falls back to --no-huge (hugepages = auto) when
    # this is not possible (containers, no privilege).
    local want=1024
    local have
    have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
    if [ "$have" -lt "$want" ]; then
        echo "$want" > /proc/sys/vm/nr_hugepages 2>/dev/null || true
    fi
    if ! grep -qs hugetlbfs /proc/mounts; then
        mkdir -p /dev/hugepages
        mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true
    fi
    echo "==> hugepages: $(awk '/HugePages_Free/ {print $2}' /proc/meminfo) free of $(cat /proc/sys/vm/nr_hugepages) (DPDK uses --no-huge when none)"
}

# What every entry point (demo.sh, l2-demo.sh, test.sh) does first: checks
# it runs as root, installs the packages, reserves hugepages.
prepare_machine() {
    need_root
    install_packages
    setup_hugepages
}
