//! A real container runtime drives sluice-cni: Debian 12's podman with its
//! CNI network backend (netavark is the default) and runc (crun fails on
//! these hybrid-cgroup machines), pointed at a Sluice conflist in a
//! test-owned configuration directory, runs containers from a busybox root
//! filesystem imported locally (no registry is reachable). The setup is the
//! one `control/README.md` documents.
//!
//! A test thread stands in for sluice-agent by setting
//! `Logical_Port.up = true` when a row appears (`cni_harness::Agent`), so
//! these tests check the attachment (addresses, routes, MTU, rows) and the
//! detachment on `podman rm` without sluiced; `podman_e2e.rs` runs the
//! same runtime with the real agent and sluiced.

mod cni_harness;

use cni_harness::podman::{leases, Podman, NET};
use cni_harness::*;

#[test]
fn podman_run_attaches_and_podman_rm_detaches() {
    if !Podman::ready("podman_run_attaches_and_podman_rm_detaches") {
        return;
    }
    let db = Nestdb::start(true);
    let _agent = Agent::start(&db);
    let pm = Podman::new(&db);
    let networks = pm.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        networks.lines().any(|l| l == NET),
        "podman does not list {NET}: {networks}"
    );

    let ids = [pm.start("pod-a"), pm.start("pod-b")];
    let mut addrs = Vec::new();
    for (id, name) in ids.iter().zip(["pod-a", "pod-b"]) {
        let row = db
            .port(&format!("{id}_eth0"))
            .unwrap_or_else(|| panic!("no Logical_Port for {name} ({id}); rows: {:?}", db.ports()));
        assert!(row.up);
        assert_eq!(row.interface_name, "eth0");
        assert_eq!(row.external_ids["cni_network"], NET);
        let ip = row.ips.iter().next().unwrap().clone();
        assert!(ip.starts_with("10.250.0."), "{ip}");
        // Inside the container: the address, the MAC, the MTU, the route.
        let a = pm.ok(&[
            "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ]);
        assert!(a.contains(&format!("inet {ip}/24")), "{name}: {a}");
        let l = pm.ok(&["exec", name, "ip", "-o", "link", "show", "dev", "eth0"]);
        assert!(
            l.contains("mtu 1438") && l.contains(&row.mac),
            "{name}: {l}"
        );
        let r = pm.ok(&["exec", name, "ip", "-4", "route", "show", "default"]);
        assert!(r.contains("default via 10.250.0.1 dev eth0"), "{name}: {r}");
        // The host end exists, as the agent will look for it.
        assert!(host_link(&row.external_ids["host_interface"]).is_some());
        addrs.push(ip);
    }
    assert_ne!(addrs[0], addrs[1]);
    let mut both = addrs.clone();
    both.sort();
    assert_eq!(leases(&pm.ipam_dir()), both);

    // podman rm: DEL removes the row, the veth and the lease of that one.
    let host_a =
        db.port(&format!("{}_eth0", ids[0])).unwrap().external_ids["host_interface"].clone();
    pm.ok(&["rm", "-f", "-t", "0", "pod-a"]);
    assert!(
        db.port(&format!("{}_eth0", ids[0])).is_none(),
        "pod-a's row outlived podman rm"
    );
    assert!(
        host_link(&host_a).is_none(),
        "pod-a's veth outlived podman rm"
    );
    assert_eq!(leases(&pm.ipam_dir()), vec![addrs[1].clone()]);
    assert!(db.port(&format!("{}_eth0", ids[1])).is_some());
    pm.ok(&["rm", "-f", "-t", "0", "pod-b"]);
    assert!(db.ports().is_empty(), "{:?}", db.ports());
    assert!(leases(&pm.ipam_dir()).is_empty());
}
