//! Installing the CNI plugin, its configuration and the AppArmor profile,
//! and removing exactly that again.
//!
//! Invariants: a file is recorded in the manifest (`manifest.json` in the
//! state directory, with the SHA-1 of what will be written and a copy of
//! any file it replaces) before it is written, and written atomically
//! (temporary file in the same directory, mode set, fsync, rename), so a
//! crash at any point leaves either the old or the new file and a manifest
//! that covers it. A file is replaced only by a different content; a
//! directory is recorded when the bootstrap created it. Uninstall undoes
//! the manifest in reverse: a file still holding what was written is
//! removed (or its copy put back), a file changed since is left alone and
//! named in the log, created directories are removed when empty.
//!
//! Thread-safety: none; one bootstrap at a time.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::{apparmor, version, BootstrapError, Layout};

/// The CNI plugin's file name in the CNI bin directory (the conflist's
/// `"type"`).
pub const PLUGIN_NAME: &str = "sluice";
/// The conflist's file name.
pub const CONFLIST_NAME: &str = "10-sluice.conflist";
/// The loopback configuration's file name.
pub const LOOPBACK_NAME: &str = "99-loopback.conf";
/// The AppArmor profile's file name (and profile name).
pub const PROFILE_NAME: &str = "sluiced";
/// Reference plugins installed from the node's plugin directory when the
/// CNI bin directory has none.
pub const REFERENCE_PLUGINS: [&str; 2] = ["loopback", "host-local"];

/// The conflist installed when none is given: the same as the template
/// `deploy/cni/10-sluice.conflist` (sluice-cni's configuration: nestdb
/// socket, port-up timeout, host-local IPAM); pass the template, or a
/// node's own, with `--conflist`.
pub const DEFAULT_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "sluice",
  "plugins": [
    {
      "type": "sluice",
      "nestdb": "unix:/var/run/nestdb/nestdb-server.sock",
      "portUpTimeoutMs": 30000,
      "ipam": {
        "type": "host-local",
        "dataDir": "/var/lib/cni/networks"
      }
    }
  ]
}
"#;
/// `99-loopback.conf`, as shipped in `deploy/cni/`.
pub const LOOPBACK_CONF: &str = include_str!("../../../deploy/cni/99-loopback.conf");
/// The AppArmor profile of `sluiced`, as shipped in `deploy/apparmor/`.
pub const APPARMOR_PROFILE: &str = include_str!("../../../deploy/apparmor/sluiced");

const MANIFEST: &str = "manifest.json";
const BACKUP_DIR: &str = "replaced";

/// What the install writes, and from where.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The `sluice-cni` binary.
    pub cni_plugin: PathBuf,
    /// Where `loopback` and `host-local` come from, first match wins
    /// (Debian's `containernetworking-plugins`: `/usr/lib/cni`; the node
    /// image: its own `/opt/cni/bin`).
    pub plugins_dirs: Vec<PathBuf>,
    /// The conflist text, before the version stamp.
    pub conflist: String,
    /// Where the conflist came from, for messages.
    pub conflist_origin: String,
    /// The AppArmor profile text.
    pub apparmor_profile: String,
    /// The version stamped into the conflist.
    pub build_version: String,
    /// Whether to load the profile into the kernel.
    pub apparmor: apparmor::Mode,
}

/// One file the bootstrap wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Where.
    pub path: PathBuf,
    /// SHA-1 (hex) of what was written.
    pub sha1: String,
    /// The copy of the file it replaced, if there was one.
    pub backup: Option<PathBuf>,
}

/// What the bootstrap installed on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The version of the bootstrap that last changed it.
    pub version: String,
    /// The root the paths below were written under ([`Layout::root`]).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Directories it created, outermost first.
    pub dirs: Vec<PathBuf>,
    /// Files it wrote, in order.
    pub files: Vec<FileEntry>,
    /// The profile it loaded into the kernel, if it did.
    #[serde(default)]
    pub apparmor_loaded: Option<PathBuf>,
}

impl Manifest {
    /// The manifest's path in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(MANIFEST)
    }

    /// Reads the manifest; an absent one is empty.
    ///
    /// # Errors
    /// [`BootstrapError::Record`] when it cannot be read or parsed.
    pub fn load(state_dir: &Path) -> Result<Manifest, BootstrapError> {
        let path = Self::path(state_dir);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| BootstrapError::Record {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(BootstrapError::Record {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Moves every recorded path from the root it was written under to
    /// `root` (an install made under `/host` by the init container, seen
    /// under `/` on the host), and records `root`.
    pub fn rebase(&mut self, root: &Path) {
        if let Some(old) = self.root.clone().filter(|old| old != root) {
            tracing::info!(
                "the install was recorded under {}; this run works under {}",
                old.display(),
                root.display()
            );
            let remap = |p: &mut PathBuf| {
                if let Ok(rel) = p.strip_prefix(&old) {
                    *p = root.join(rel);
                }
            };
            for f in &mut self.files {
                remap(&mut f.path);
                if let Some(b) = &mut f.backup {
                    remap(b);
                }
            }
            self.dirs.iter_mut().for_each(remap);
            if let Some(p) = &mut self.apparmor_loaded {
                remap(p);
            }
        }
        self.root = Some(root.to_path_buf());
    }

    fn save(&self, state_dir: &Path) -> Result<(), BootstrapError> {
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| BootstrapError::Record {
            path: Self::path(state_dir),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        write_atomic(&Self::path(state_dir), &text, 0o644)
    }
}

/// SHA-1 of `data`, hex.
pub fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates `dir` and its missing ancestors (mode 0755); returns those it
/// created, outermost first.
///
/// # Errors
/// [`BootstrapError::Io`].
pub fn ensure_dir(dir: &Path) -> Result<Vec<PathBuf>, BootstrapError> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    missing.reverse();
    for p in &missing {
        match fs::create_dir(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(BootstrapError::io("create directory", p)(e)),
        }
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))
            .map_err(BootstrapError::io("set the mode of", p))?;
    }
    Ok(missing)
}

/// Writes `data` to `path` atomically with `mode`: a temporary file in the
/// same directory, fsync, rename over `path`, fsync of the directory.
///
/// # Errors
/// [`BootstrapError::Io`].
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), BootstrapError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".sluice-bootstrap.")
        .tempfile_in(dir)
        .map_err(BootstrapError::io("create a temporary file in", dir))?;
    tmp.write_all(data)
        .map_err(BootstrapError::io("write", tmp.path()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(BootstrapError::io("set the mode of", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(BootstrapError::io("sync", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| BootstrapError::io("rename a temporary file to", path)(e.error))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The install in progress: the layout and the manifest, saved after every
/// change.
struct Installer<'a> {
    layout: &'a Layout,
    manifest: Manifest,
}

impl Installer<'_> {
    fn note_dirs(&mut self, dirs: Vec<PathBuf>) -> Result<(), BootstrapError> {
        if dirs.is_empty() {
            return Ok(());
        }
        for d in &dirs {
            tracing::info!("created directory {}", d.display());
        }
        self.manifest.dirs.extend(dirs);
        self.manifest.save(&self.layout.state_dir)
    }

    /// Records and writes one file (see the module's invariants).
    fn put(&mut self, path: &Path, data: &[u8], mode: u32) -> Result<(), BootstrapError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let created = ensure_dir(dir)?;
        self.note_dirs(created)?;
        let sha1 = sha1_hex(data);
        match self.manifest.files.iter_mut().find(|f| f.path == path) {
            Some(entry) => entry.sha1 = sha1,
            None => {
                let backup = if path.exists() {
                    let bdir = self.layout.state_dir.join(BACKUP_DIR);
                    let created = ensure_dir(&bdir)?;
                    self.note_dirs(created)?;
                    let name = format!(
                        "{}-{}",
                        self.manifest.files.len(),
                        path.file_name().unwrap_or_default().to_string_lossy()
                    );
                    let b = bdir.join(name);
                    let old = fs::read(path).map_err(BootstrapError::io("read", path))?;
                    let old_mode = fs::metadata(path)
                        .map_err(BootstrapError::io("read", path))?
                        .permissions()
                        .mode()
                        & 0o7777;
                    write_atomic(&b, &old, old_mode)?;
                    Some(b)
                } else {
                    None
                };
                self.manifest.files.push(FileEntry {
                    path: path.to_path_buf(),
                    sha1,
                    backup,
                });
            }
        }
        self.manifest.save(&self.layout.state_dir)?;
        write_atomic(path, data, mode)
    }
}

fn read_source(
    what: &'static str,
    path: &Path,
    hint: &'static str,
) -> Result<Vec<u8>, BootstrapError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BootstrapError::MissingSource {
            what,
            path: path.to_path_buf(),
            hint,
        }),
        Err(e) => Err(BootstrapError::io("read", path)(e)),
    }
}

/// Installs everything in `sources` into `layout` (see the module
/// documentation for what is replaced when).
///
/// # Errors
/// [`BootstrapError`] naming the file or command that failed; what was
/// written before stays recorded in the manifest.
pub fn install(layout: &Layout, sources: &Sources) -> Result<(), BootstrapError> {
    // Check every input before the node is touched.
    let plugin = read_source(
        "the sluice-cni binary",
        &sources.cni_plugin,
        "pass its path with --cni-plugin (it is installed as /opt/cni/bin/sluice)",
    )?;
    let conflist = version::stamp(&sources.conflist, &sources.build_version).map_err(|reason| {
        BootstrapError::BadConflist {
            origin: sources.conflist_origin.clone(),
            reason,
        }
    })?;

    let mut reference = Vec::new();
    for name in REFERENCE_PLUGINS {
        let target = layout.cni_bin_dir.join(name);
        if target.exists() {
            tracing::info!("{}: present, left alone", target.display());
            continue;
        }
        let Some(source) = sources
            .plugins_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
        else {
            return Err(BootstrapError::MissingReferencePlugin {
                name,
                dirs: sources
                    .plugins_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let data = fs::read(&source).map_err(BootstrapError::io("read", &source))?;
        reference.push((target, source, data));
    }

    let created = ensure_dir(&layout.state_dir)?;
    let mut inst = Installer {
        layout,
        manifest: Manifest::load(&layout.state_dir)?,
    };
    inst.manifest.version = sources.build_version.clone();
    inst.manifest.rebase(&layout.root);
    inst.note_dirs(created)?;
    inst.manifest.save(&layout.state_dir)?;

    // The version of the installed conflist, if a sluice-bootstrap wrote it.
    let conflist_target = layout.cni_conf_dir.join(CONFLIST_NAME);
    let installed_version = fs::read_to_string(&conflist_target)
        .ok()
        .and_then(|t| version::of_conflist(&t));
    let newer_installed = installed_version
        .as_deref()
        .filter(|v| version::compare(&sources.build_version, v).is_lt());

    // The plugin: the one this bootstrap ships, whenever it differs, unless
    // a newer sluice is installed (the plugin goes with its conflist: a
    // rolled-back bootstrap leaves a newer pair alone).
    let target = layout.cni_bin_dir.join(PLUGIN_NAME);
    if fs::read(&target).ok().as_deref() == Some(&plugin[..]) {
        tracing::info!("{}: up to date", target.display());
    } else if let (Some(v), true) = (newer_installed, target.exists()) {
        tracing::info!(
            "{}: left alone, it goes with the installed conflist of the newer version {v} (this build: {})",
            target.display(),
            sources.build_version
        );
    } else {
        inst.put(&target, &plugin, 0o755)?;
        tracing::info!(
            "{}: installed from {}",
            target.display(),
            sources.cni_plugin.display()
        );
    }

    // The reference plugins, only where the node has none.
    for (target, source, data) in reference {
        inst.put(&target, &data, 0o755)?;
        tracing::info!("{}: installed from {}", target.display(), source.display());
    }

    // The conflist, only when this build is newer than the installed one.
    let target = conflist_target;
    let ours = &sources.build_version;
    match fs::read_to_string(&target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            inst.put(&target, conflist.as_bytes(), 0o644)?;
            tracing::info!("{}: installed (version {ours})", target.display());
        }
        Err(e) => return Err(BootstrapError::io("read", &target)(e)),
        Ok(old) => match version::of_conflist(&old) {
            Some(theirs) if version::compare(ours, &theirs).is_gt() => {
                inst.put(&target, conflist.as_bytes(), 0o644)?;
                tracing::info!(
                    "{}: replaced version {theirs} with the newer {ours}",
                    target.display()
                );
            }
            Some(theirs) => {
                tracing::info!(
                    "{}: installed version {theirs} is {} this build's {ours}: left alone",
                    target.display(),
                    if version::compare(ours, &theirs).is_eq() {
                        "the same as"
                    } else {
                        "newer than"
                    }
                );
            }
            None => {
                inst.put(&target, conflist.as_bytes(), 0o644)?;
                tracing::info!(
                    "{}: carried no {} (not written by sluice-bootstrap): replaced with version {ours}, the old one is kept for --uninstall",
                    target.display(),
                    version::VERSION_KEY
                );
            }
        },
    }

    // The loopback configuration, never over an existing one.
    let target = layout.cni_conf_dir.join(LOOPBACK_NAME);
    if target.exists() {
        tracing::info!("{}: present, left alone", target.display());
    } else {
        inst.put(&target, LOOPBACK_CONF.as_bytes(), 0o644)?;
        tracing::info!("{}: installed", target.display());
    }

    // The AppArmor profile.
    let target = layout.apparmor_dir.join(PROFILE_NAME);
    if fs::read(&target).ok().as_deref() == Some(sources.apparmor_profile.as_bytes()) {
        tracing::info!("{}: up to date", target.display());
    } else {
        inst.put(&target, sources.apparmor_profile.as_bytes(), 0o644)?;
        tracing::info!("{}: installed", target.display());
    }
    if apparmor::load_if_enabled(sources.apparmor, &target)? {
        inst.manifest.apparmor_loaded = Some(target);
        inst.manifest.save(&layout.state_dir)?;
    }
    tracing::info!(
        "install done; the record of what was installed is {}",
        Manifest::path(&layout.state_dir).display()
    );
    Ok(())
}

/// Removes what the manifest in `layout.state_dir` lists (see the module
/// documentation), then the manifest and the directories the bootstrap
/// created. `extra_dirs` are more directories to remove when empty (those
/// the node-IP record created).
///
/// # Errors
/// [`BootstrapError`] naming the file that could not be removed.
pub fn uninstall(layout: &Layout, extra_dirs: &[PathBuf]) -> Result<(), BootstrapError> {
    let mut manifest = Manifest::load(&layout.state_dir)?;
    manifest.rebase(&layout.root);
    if manifest.files.is_empty() && manifest.dirs.is_empty() {
        tracing::info!(
            "nothing recorded in {}: nothing to uninstall",
            Manifest::path(&layout.state_dir).display()
        );
    }
    if let Some(profile) = &manifest.apparmor_loaded {
        apparmor::unload(profile)?;
    }
    let mut kept = false;
    for f in manifest.files.iter().rev() {
        let now = match fs::read(&f.path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(BootstrapError::io("read", &f.path)(e)),
        };
        if now.as_deref().is_some_and(|b| sha1_hex(b) != f.sha1) {
            kept = true;
            tracing::warn!(
                "{}: changed since sluice-bootstrap installed it: left alone{}",
                f.path.display(),
                f.backup
                    .as_ref()
                    .map(|b| format!(" (the file it replaced is kept in {})", b.display()))
                    .unwrap_or_default()
            );
            continue;
        }
        match &f.backup {
            Some(b) => {
                // A rename keeps the copy's mode and contents exactly.
                fs::rename(b, &f.path).map_err(BootstrapError::io("restore", &f.path))?;
                tracing::info!("{}: the file it replaced is back", f.path.display());
            }
            None if now.is_some() => {
                fs::remove_file(&f.path).map_err(BootstrapError::io("remove", &f.path))?;
                tracing::info!("{}: removed", f.path.display());
            }
            None => tracing::info!("{}: already gone", f.path.display()),
        }
    }
    if !kept {
        let m = Manifest::path(&layout.state_dir);
        match fs::remove_file(&m) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BootstrapError::io("remove", &m)(e)),
        }
    }
    let mut dirs: Vec<&PathBuf> = manifest.dirs.iter().chain(extra_dirs).collect();
    // Deepest first.
    dirs.sort_by(|a, b| {
        (b.components().count(), b.as_path()).cmp(&(a.components().count(), a.as_path()))
    });
    dirs.dedup();
    for d in dirs {
        match fs::remove_dir(d) {
            Ok(()) => tracing::info!("{}: removed (empty directory it created)", d.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => tracing::info!(
                "{}: not empty (holds files it did not install), left alone",
                d.display()
            ),
        }
    }
    tracing::info!("uninstall done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_are_what_they_claim() {
        let lo: serde_json::Value = serde_json::from_str(LOOPBACK_CONF).unwrap();
        assert_eq!(lo["type"], "loopback");
        assert!(version::stamp(DEFAULT_CONFLIST, "0.1.0").is_ok());
        assert!(APPARMOR_PROFILE.contains("profile sluiced"));
    }

    #[test]
    fn rebase_moves_recorded_paths_to_the_new_root() {
        let mut m = Manifest {
            root: Some("/host".into()),
            dirs: vec!["/host/etc/cni".into(), "/elsewhere".into()],
            files: vec![FileEntry {
                path: "/host/opt/cni/bin/sluice".into(),
                sha1: String::new(),
                backup: Some("/host/var/lib/sluice/bootstrap/replaced/0-sluice".into()),
            }],
            ..Manifest::default()
        };
        m.rebase(Path::new("/"));
        assert_eq!(m.root.as_deref(), Some(Path::new("/")));
        assert_eq!(m.dirs, [PathBuf::from("/etc/cni"), "/elsewhere".into()]);
        assert_eq!(m.files[0].path, PathBuf::from("/opt/cni/bin/sluice"));
        assert_eq!(
            m.files[0].backup.as_deref(),
            Some(Path::new("/var/lib/sluice/bootstrap/replaced/0-sluice"))
        );
    }

    #[test]
    fn sha1_is_the_standard_one() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
