//! The node bootstrap (`sluice-bootstrap`): what the DaemonSet's init
//! container (or an operator, by hand) puts on a node before pods can be
//! attached, and takes away again.
//!
//! - [`install`]: the CNI plugin `/opt/cni/bin/sluice`, the reference
//!   plugins `loopback` and `host-local` when the node has none,
//!   `/etc/cni/net.d/10-sluice.conflist` stamped with this build's version
//!   and written only when that is newer than the installed one
//!   ([`version`]), `99-loopback.conf` (never over an existing one), and
//!   the AppArmor profile of `sluiced` in `/etc/apparmor.d` (loaded when
//!   AppArmor is enabled, [`apparmor`]). Every file is written atomically
//!   (temporary file in the same directory, then rename) with its mode, and
//!   recorded in a manifest in the state directory before it is written,
//!   with a copy of any file it replaces; [`install::uninstall`] removes
//!   exactly what the manifest lists (restoring the copies) and the
//!   directories it created, and leaves anything changed since alone.
//! - [`nodeip`]: moves the node's IPv4 addresses and routes from the uplink
//!   (`node-if`) to the host exception port and back, with
//!   `sluice-hostnet` (the implementation `sluiced` uses), recording the
//!   plan first so that an interrupted move is finished by a re-run and a
//!   move-back restores exactly what was moved.
//!
//! Paths are a [`Layout`], all under one root (`/` on a node, `/host` in a
//! container with the host mounted there, a temporary directory in tests).
//!
//! Thread-safety: one bootstrap runs at a time per node: [`lock`] takes an
//! exclusive `flock` on the state directory (or its nearest existing
//! ancestor, before the first install creates it), and a second bootstrap
//! fails at once saying so.

pub mod apparmor;
pub mod install;
pub mod nodeip;
pub mod pci;
pub mod supervise;
pub mod version;

use std::path::{Path, PathBuf};

/// Where the bootstrap puts things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The node's root as seen by this process (`/`, or `/host` in a
    /// container). The manifest records it, so that an uninstall under
    /// another root (by hand on the host after the init container
    /// installed under `/host`) finds the same files.
    pub root: PathBuf,
    /// The CNI plugin directory (kubelet's `--cni-bin-dir`).
    pub cni_bin_dir: PathBuf,
    /// The CNI configuration directory (kubelet's `--cni-conf-dir`).
    pub cni_conf_dir: PathBuf,
    /// The AppArmor profile directory.
    pub apparmor_dir: PathBuf,
    /// The bootstrap's own records: the install manifest, copies of the
    /// files it replaced, the node-IP move.
    pub state_dir: PathBuf,
}

impl Layout {
    /// The standard paths under `root`.
    pub fn under(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            cni_bin_dir: root.join("opt/cni/bin"),
            cni_conf_dir: root.join("etc/cni/net.d"),
            apparmor_dir: root.join("etc/apparmor.d"),
            state_dir: root.join("var/lib/sluice/bootstrap"),
        }
    }
}

/// Why the bootstrap could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A file system operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "read"…).
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The system's answer.
        source: std::io::Error,
    },
    /// Something to install is not where it was expected.
    #[error("{what} not found at {}: {hint}", path.display())]
    MissingSource {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// What to do.
        hint: &'static str,
    },
    /// A reference plugin is needed and none of the directories has it.
    #[error("the node has no CNI plugin {name} and none of {dirs} has one to install: install Debian's containernetworking-plugins (it puts them in /usr/lib/cni) or pass --plugins-dir")]
    MissingReferencePlugin {
        /// The plugin.
        name: &'static str,
        /// Where it was looked for.
        dirs: String,
    },
    /// The conflist to install is not a conflist.
    #[error("the CNI configuration {origin} cannot be installed: {reason}")]
    BadConflist {
        /// Where it came from.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A record of the bootstrap's is unreadable.
    #[error("cannot read {}: {reason}; move it away to start afresh (what it lists stays on the node)", path.display())]
    Record {
        /// The record.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `apparmor_parser` failed or is missing.
    #[error("AppArmor: {0}")]
    AppArmor(String),
    /// An interface needed for the node-IP move is missing or wrong.
    #[error("{0}")]
    Interface(String),
    /// Another bootstrap is running.
    #[error("another sluice-bootstrap is running on this node (it holds the lock on {}): wait for it to finish", .0.display())]
    Busy(PathBuf),
    /// A step of the node-IP move failed.
    #[error(transparent)]
    HostNet(#[from] sluice_hostnet::HostNetError),
}

/// Takes the per-node bootstrap lock: an exclusive, non-blocking `flock`
/// on `state_dir`, or on its nearest existing ancestor. Held until the
/// returned file is dropped (or the process ends).
///
/// # Errors
/// [`BootstrapError::Busy`] when another bootstrap holds it,
/// [`BootstrapError::Io`] when the directory cannot be opened.
pub fn lock(state_dir: &Path) -> Result<std::fs::File, BootstrapError> {
    use std::os::fd::AsRawFd;
    let dir = state_dir
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"));
    let f = std::fs::File::open(dir).map_err(BootstrapError::io("open", dir))?;
    // SAFETY: flock(2) on a file descriptor this function owns; no memory
    // is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(BootstrapError::Busy(dir.to_path_buf()));
        }
        return Err(BootstrapError::io("lock", dir)(e));
    }
    Ok(f)
}

impl BootstrapError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| BootstrapError::Io { what, path, source }
    }
}
