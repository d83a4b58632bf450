//! `sluice-bootstrap supervise` with a vfio-pci uplink: when the datapath
//! dies, the NIC goes back to its kernel driver (sysfs: `driver_override`
//! cleared, unbound from vfio-pci, bound to the driver it was seen on)
//! before the node's addresses go back on its kernel interface.
//!
//! THIS IS A MOCK, and why: these machines have no spare NIC and no IOMMU,
//! so no device can be bound to vfio-pci here. The supervisor's sysfs root
//! is pointed (`SLUICE_SYSFS_ROOT`) at a fake tree under a temporary
//! directory, with the files the kernel documents
//! (`bus/pci/devices/ADDR/{driver,driver_override,net/}`,
//! `bus/pci/drivers/{vfio-pci,ixgbe}/{bind,unbind}`). A test thread plays
//! the kernel: `drivers/ixgbe/bind` is a FIFO it reads, and when the
//! address arrives it checks what the supervisor wrote before (the
//! override cleared, the unbind from vfio-pci) and that the node's address
//! is *not yet* back (the order the brief asks for), then "binds": the
//! `driver` link moves to ixgbe and `net/up0` appears. What the mock cannot
//! show: the NIC's kernel interface really vanishing while bound to
//! vfio-pci (here `up0` is a veth that always exists) and a real driver's
//! probe. The stand-in datapath (python3) plays sluiced as in
//! `bootstrap_supervise.rs` (TAP host port, the address moved onto it) and
//! also plays the binding to vfio-pci (the `driver` link, `net/` emptied).

mod supervise_harness;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_testkit::sh;
use supervise_harness::{can_run, stand_in_pid, uplink_addresses, wait_exit, Uplink, WAIT};

const PCI: &str = "0000:5e:00.0";
const NODE: &str = "slvf-node";

const FAKE_SLUICED: &str = r#"
import fcntl, os, struct, subprocess, sys, time, shutil
sysfs = os.environ['SLUICE_SYSFS_ROOT']
dev = os.path.join(sysfs, 'bus/pci/devices/0000:5e:00.0')
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'vf-host', 0x0002 | 0x1000))
run = lambda *a: subprocess.run(['ip'] + list(a), check=True)
run('link', 'set', 'vf-host', 'up')
run('addr', 'add', '10.80.0.1/24', 'dev', 'vf-host')
run('addr', 'del', '10.80.0.1/24', 'dev', 'up0')
# The NIC bound to vfio-pci (what dpdk-devbind.py does).
open(os.path.join(dev, 'driver_override'), 'w').write('vfio-pci\n')
os.remove(os.path.join(dev, 'driver'))
os.symlink('../../drivers/vfio-pci', os.path.join(dev, 'driver'))
shutil.rmtree(os.path.join(dev, 'net'))
print(os.getpid(), flush=True)
time.sleep(3600)
"#;

/// What the mock kernel saw when the bind arrived.
#[derive(Debug)]
struct Seen {
    bound: String,
    override_: String,
    unbind: String,
    uplink_at_bind: String,
}

fn uplink() -> String {
    uplink_addresses(NODE)
}

/// The kernel's side of the bind: waits (bounded) for the address on the
/// FIFO `drivers/ixgbe/bind`, then binds the device to ixgbe.
fn mock_kernel(sys: PathBuf) -> std::thread::JoinHandle<Option<Seen>> {
    let bind = sys.join("bus/pci/drivers/ixgbe/bind");
    // Opened before the supervisor starts: its write never blocks.
    let mut fifo = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&bind)
        .expect("open the bind FIFO");
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut got = String::new();
        while got.is_empty() {
            if t0.elapsed() > WAIT {
                return None;
            }
            let mut buf = [0u8; 64];
            match fifo.read(&mut buf) {
                Ok(n) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                // No writer yet (EOF) or nothing written yet: poll again.
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let dev = sys.join("bus/pci/devices").join(PCI);
        let seen = Seen {
            bound: got,
            override_: fs::read_to_string(dev.join("driver_override")).unwrap_or_default(),
            unbind: fs::read_to_string(sys.join("bus/pci/drivers/vfio-pci/unbind"))
                .unwrap_or_default(),
            uplink_at_bind: uplink(),
        };
        fs::remove_file(dev.join("driver")).expect("unlink driver");
        symlink("../../drivers/ixgbe", dev.join("driver")).expect("driver -> ixgbe");
        fs::create_dir_all(dev.join("net/up0")).expect("net/up0");
        Some(seen)
    })
}

fn fake_sysfs(root: &Path) -> PathBuf {
    let sys = root.join("sys");
    let dev = sys.join("bus/pci/devices").join(PCI);
    fs::create_dir_all(dev.join("net/up0")).expect("mkdir");
    for d in ["vfio-pci", "ixgbe"] {
        let dir = sys.join("bus/pci/drivers").join(d);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("unbind"), "").expect("unbind");
    }
    fs::write(sys.join("bus/pci/drivers/vfio-pci/bind"), "").expect("bind");
    fs::write(sys.join("bus/pci/drivers_probe"), "").expect("drivers_probe");
    let c = std::ffi::CString::new(
        sys.join("bus/pci/drivers/ixgbe/bind")
            .to_str()
            .expect("utf-8 path"),
    )
    .expect("path");
    // SAFETY: mkfifo(3) with a NUL-terminated path this function owns.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    fs::write(dev.join("driver_override"), "\n").expect("override");
    symlink("../../drivers/ixgbe", dev.join("driver")).expect("driver link");
    sys
}

#[test]
fn a_vfio_pci_uplink_goes_back_to_its_driver_before_the_addresses() {
    if !can_run("bootstrap_vfio") {
        return;
    }
    let net = Uplink::new("slvf", "10.80.0.1/24", "10.80.0.2/24");

    let tmp = tempfile::tempdir().expect("tempdir");
    let sys = fake_sysfs(tmp.path());
    let state = tmp.path().join("state");
    let ini = tmp.path().join("sluiced.ini");
    fs::write(
        &ini,
        format!("[nsx_node_agent]\novs_uplink_port = uplink\n[port:uplink]\ndevargs = {PCI}\nofport = 1\n[port:host]\ndevargs = net_tap0,iface=vf-host\n"),
    )
    .expect("ini");
    let kernel = mock_kernel(sys.clone());
    let mut sup = net
        .supervise(&state, "vf-host")
        .args(["python3", "-c", FAKE_SLUICED, "--config"])
        .arg(&ini)
        .env("SLUICE_SYSFS_ROOT", &sys)
        .spawn()
        .expect("sluice-bootstrap supervise");
    let pid = stand_in_pid(&mut sup);
    // The supervisor saw the NIC on ixgbe at start and recorded it.
    let rec = fs::read_to_string(state.join("uplink-nic.json")).expect("uplink-nic.json");
    assert!(
        rec.contains("\"driver\": \"ixgbe\"") && rec.contains(PCI),
        "{rec}"
    );
    assert!(!uplink().contains("10.80.0.1/24"), "moved: {}", uplink());

    sh(&["kill", "-KILL", &pid.to_string()]);
    let st = wait_exit(&mut sup);
    let seen = kernel.join().expect("mock kernel").expect(
        "the supervisor never bound the NIC to ixgbe (nothing written to drivers/ixgbe/bind)",
    );
    assert_eq!(st.code(), Some(137), "the datapath's status");
    assert_eq!(seen.bound, PCI, "{seen:?}");
    assert_eq!(
        seen.override_, "\n",
        "driver_override cleared first: {seen:?}"
    );
    assert_eq!(seen.unbind, PCI, "unbound from vfio-pci first: {seen:?}");
    assert!(
        !seen.uplink_at_bind.contains("10.80.0.1/24"),
        "the address went back before the NIC was given back: {seen:?}"
    );
    let up = uplink();
    assert!(up.contains("10.80.0.1/24"), "{up}");
    net.peer_reaches("10.80.0.1");
    assert!(!state.join("node-ip.json").exists(), "record kept");
}
