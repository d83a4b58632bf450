//! The power-loss model the durability tests share (nestdb's log,
//! sluiced's state file): an LD_PRELOAD shim (`lib/testkit/powerloss/shim.c`,
//! compiled by the test with the system C compiler) that records what a
//! power cut would keep — a file's contents as of its last
//! fsync/fdatasync, the watched directory's entries as of its last fsync —
//! and [`power_cut`], which rebuilds the directory from those records
//! alone, keeping at random none, all or part of each file's unsynced tail
//! (writes that happened to reach the disk, possibly torn, possibly as
//! zeros when a file's size reached the disk before its data) and, when
//! asked, the directory operations done since its last fsync (a journaling
//! file system may commit them early, in order).
//!
//! A process under test is either SIGKILLed by the test (the cut is the
//! kill), or kills itself at a chosen sync (`POWERLOSS_KILL_AT`), or is
//! the test binary itself ([`rerun_under_shim`], [`InProcess`]): then the
//! cut is armed for the n-th next sync, after which every sync under the
//! directory fails with EIO and records nothing, so the code under test
//! stops where the power cut would have stopped it.
//!
//! Invariants: the rebuild reads only the shim's records and the files'
//! present contents; a tail is kept only when the file's present contents
//! extend its durable ones. Thread-safety: plain functions; [`InProcess`]
//! calls the shim's functions, which take its lock.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rand::Rng;

/// The shim's source.
pub fn shim_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("powerloss/shim.c")
}

/// Compiles the shim into `dir`; `Err(why)` (for the caller's skip line)
/// without a C compiler.
///
/// # Panics
/// When the compiler fails on the shim.
pub fn build_shim(dir: &Path) -> Result<PathBuf, String> {
    let out = dir.join("powerloss.so");
    match std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(shim_source())
        .arg("-ldl")
        .output()
    {
        Ok(o) if o.status.success() => Ok(out),
        Ok(o) => panic!(
            "cc could not build the power-loss shim: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => Err(format!("no C compiler ({e}); install build-essential")),
    }
}

/// Every regular file of `dir` by name: (inode, contents).
pub fn files(dir: &Path) -> BTreeMap<String, (u64, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| {
            let e = e.ok()?;
            let m = e.metadata().ok()?;
            m.is_file().then(|| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    (m.ino(), std::fs::read(e.path()).unwrap_or_default()),
                )
            })
        })
        .collect()
}

/// What [`power_cut`] may do beyond the basic model (the defaults: only
/// keep part of unsynced tails, as nestdb's test always did).
#[derive(Debug, Clone, Copy, Default)]
pub struct CutOptions {
    /// A kept tail may end in zeros instead of the data (the file's size
    /// reached the disk, its data did not).
    pub zero_tails: bool,
    /// At random, the directory operations done since the directory's last
    /// fsync all reached the disk (the present entries are kept instead of
    /// the durable map).
    pub dir_ops_may_land: bool,
}

/// What one [`power_cut`] kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Unsynced bytes kept (data or zeros).
    pub unsynced_kept: usize,
    /// Of those, bytes kept as zeros.
    pub zeroed: usize,
    /// The unsynced directory operations were kept.
    pub dir_ops_landed: bool,
}

/// Rebuilds `dir` as a power cut would leave it from the shim's records
/// in `state` (see the module documentation).
///
/// # Panics
/// When the records or the directory cannot be read or written.
pub fn power_cut(dir: &Path, state: &Path, rng: &mut impl Rng, opts: CutOptions) -> Cut {
    let now = files(dir);
    let by_ino: BTreeMap<u64, &Vec<u8>> = now.values().map(|(i, c)| (*i, c)).collect();
    let map = std::fs::read_to_string(state.join("dir.map")).expect("the shim's directory map");
    let mut entries: Vec<(u64, String)> = map
        .lines()
        .map(|line| {
            let (ino, name) = line.split_once(' ').expect("inode name");
            (ino.parse().expect("an inode number"), name.to_string())
        })
        .collect();
    let mut cut = Cut::default();
    if opts.dir_ops_may_land && rng.gen_bool(0.5) {
        cut.dir_ops_landed = true;
        entries = now.iter().map(|(n, (i, _))| (*i, n.clone())).collect();
    }
    for name in now.keys() {
        std::fs::remove_file(dir.join(name)).expect("remove a file before the rebuild");
    }
    for (ino, name) in entries {
        let mut content = std::fs::read(state.join(format!("ino-{ino}"))).unwrap_or_default();
        if let Some(cur) = by_ino.get(&ino) {
            if cur.starts_with(&content) {
                let tail = &cur[content.len()..];
                let n = match rng.gen_range(0..3) {
                    0 => 0,
                    1 => tail.len(),
                    _ => rng.gen_range(0..=tail.len()),
                };
                cut.unsynced_kept += n;
                if opts.zero_tails && n > 0 && rng.gen_bool(0.25) {
                    let data = rng.gen_range(0..=n);
                    content.extend_from_slice(&tail[..data]);
                    content.resize(content.len() + n - data, 0);
                    cut.zeroed += n - data;
                } else {
                    content.extend_from_slice(&tail[..n]);
                }
            }
        }
        std::fs::write(dir.join(&name), content).expect("write a rebuilt file");
    }
    cut
}

/// The environment variable that tells a test binary rerun by
/// [`rerun_under_shim`] that it is the child.
pub const CHILD_ENV: &str = "POWERLOSS_CHILD";

/// True in the test binary [`rerun_under_shim`] started.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs the test `test` of this test binary again, alone, with the shim
/// preloaded, [`CHILD_ENV`] and `env` set, its output passed through;
/// returns its exit status.
///
/// # Panics
/// When the binary cannot be started.
pub fn rerun_under_shim(shim: &Path, test: &str, env: &[(&str, &str)]) -> std::process::ExitStatus {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        test,
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env("LD_PRELOAD", shim)
    .env(CHILD_ENV, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.status().expect("rerun the test binary under the shim")
}

/// The shim's in-process controls, in a process it was preloaded into.
#[derive(Debug, Clone, Copy)]
pub struct InProcess {
    configure: unsafe extern "C" fn(*const libc::c_char, *const libc::c_char) -> libc::c_int,
    arm: unsafe extern "C" fn(libc::c_long),
    is_cut: unsafe extern "C" fn() -> libc::c_int,
    syncs: unsafe extern "C" fn() -> libc::c_long,
}

fn symbol(name: &std::ffi::CStr) -> Option<*mut libc::c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only
    // looks the symbol up; a null result means it is not loaded.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

impl InProcess {
    /// The controls, or None when the shim is not preloaded.
    pub fn get() -> Option<InProcess> {
        let configure = symbol(c"powerloss_configure")?;
        let arm = symbol(c"powerloss_arm")?;
        let is_cut = symbol(c"powerloss_is_cut")?;
        let syncs = symbol(c"powerloss_syncs")?;
        // SAFETY: the symbols are the shim's functions, whose C
        // signatures these pointer types match (shim.c).
        unsafe {
            Some(InProcess {
                configure: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn(*const libc::c_char, *const libc::c_char) -> libc::c_int,
                >(configure),
                arm: std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn(libc::c_long)>(
                    arm,
                ),
                is_cut: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn() -> libc::c_int,
                >(is_cut),
                syncs: std::mem::transmute::<
                    *mut libc::c_void,
                    unsafe extern "C" fn() -> libc::c_long,
                >(syncs),
            })
        }
    }

    /// Watches `dir` (absolute) with its records in `state` (absolute,
    /// empty: stale records of reused inodes would be taken as durable),
    /// takes what `dir` holds as durable, disarms the cut and resets the
    /// sync count.
    ///
    /// # Panics
    /// When a path holds a NUL or is too long.
    pub fn configure(&self, dir: &Path, state: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let d = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("a path without NUL");
        let s = std::ffi::CString::new(state.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: two valid NUL-terminated strings, read during the call.
        let r = unsafe { (self.configure)(d.as_ptr(), s.as_ptr()) };
        assert_eq!(
            r,
            0,
            "the shim refused {} / {}",
            dir.display(),
            state.display()
        );
    }

    /// Lets `n` more syncs under the directory be recorded, then cuts the
    /// power (`None`: never).
    pub fn arm(&self, n: Option<u64>) {
        let n = n.map_or(-1, |n| {
            libc::c_long::try_from(n).unwrap_or(libc::c_long::MAX)
        });
        // SAFETY: a plain C function of one integer.
        unsafe { (self.arm)(n) }
    }

    /// True once a sync was refused because the power is off.
    pub fn is_cut(&self) -> bool {
        // SAFETY: a plain C function without arguments.
        unsafe { (self.is_cut)() != 0 }
    }

    /// Syncs recorded since the last [`InProcess::configure`].
    pub fn syncs(&self) -> u64 {
        // SAFETY: a plain C function without arguments.
        u64::try_from(unsafe { (self.syncs)() }).unwrap_or(0)
    }
}
