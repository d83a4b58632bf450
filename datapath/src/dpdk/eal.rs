//! EAL initialisation and cleanup.
//!
//! `rte_eal_init` can run once per process: a second call fails with
//! `EALREADY`, even after `rte_eal_cleanup`. [`Eal::init`] enforces that
//! with a process-wide state and returns a guard whose drop runs
//! `rte_eal_cleanup` and removes the runtime directory of our file prefix.
//!
//! Hugepages: [`HugepageMode::Auto`] uses them when a hugetlbfs is mounted
//! and pages are free, and falls back to `--no-huge` otherwise;
//! `Required` refuses to start without them; `Never` always uses
//! `--no-huge`. With hugepages we pass `--huge-unlink` so that hugepage
//! files are unlinked as soon as they are mapped: they cannot leak, even
//! when the process is killed.
//!
//! Devices are not passed as `--vdev` EAL arguments: ports are probed after
//! init from their devargs (see [`super::ethdev`]), so that a bad device
//! gets an error naming the port instead of being silently skipped.

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::Mutex;

use thiserror::Error;

use super::log;
pub use crate::hugepages::HugepageMode;

/// How to initialise the EAL.
#[derive(Debug, Clone)]
pub struct EalConfig {
    /// `--file-prefix`: one DPDK primary process per prefix.
    pub file_prefix: String,
    /// Hugepage policy.
    pub hugepages: HugepageMode,
    /// Memory in MiB when running without hugepages (`-m`).
    pub no_huge_memory_mb: u32,
    /// The CPU the EAL main thread (control threads) runs on (`-l`).
    pub main_core: usize,
    /// Extra EAL arguments, passed through unchanged.
    pub extra_args: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            file_prefix: "sluice".into(),
            hugepages: HugepageMode::Auto,
            no_huge_memory_mb: 512,
            main_core: 0,
            extra_args: Vec::new(),
        }
    }
}

/// Why the EAL could not start.
#[derive(Debug, Error)]
pub enum EalError {
    /// `rte_eal_init` already ran in this process.
    #[error(
        "the DPDK EAL is already initialised in this process (it can only be initialised once)"
    )]
    AlreadyInitialized,
    /// Hugepages were required but are not usable.
    #[error("hugepages are required (hugepages = required) but {0}")]
    NoHugepages(HugepagesUnavailable),
    /// Another primary process holds the file prefix.
    #[error("another DPDK process already uses file prefix '{prefix}' (stop it or choose another file_prefix)")]
    PrefixInUse {
        /// The contested prefix.
        prefix: String,
    },
    /// An argument contains a NUL byte.
    #[error("invalid EAL argument {0:?}: contains a NUL byte")]
    BadArgument(String),
    /// `rte_eal_init` failed for another reason.
    #[error("DPDK EAL initialisation failed: {reason}")]
    InitFailed {
        /// DPDK's reason.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Running,
    Cleaned,
}

static STATE: Mutex<State> = Mutex::new(State::Fresh);

/// Why hugepages cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HugepagesUnavailable {
    /// `/proc/meminfo` is unreadable.
    #[error("/proc/meminfo cannot be read ({0})")]
    Meminfo(String),
    /// None is free.
    #[error("no hugepages are free (HugePages_Free is 0 in /proc/meminfo; reserve some with `echo 1024 > /proc/sys/vm/nr_hugepages`)")]
    NoneFree,
    /// No hugetlbfs mount.
    #[error("no hugetlbfs is mounted (mount one with `mount -t hugetlbfs nodev /dev/hugepages`)")]
    NotMounted,
}

/// Free hugepages and whether a hugetlbfs is mounted, or why not usable.
pub fn hugepages_available() -> Result<u64, HugepagesUnavailable> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| HugepagesUnavailable::Meminfo(e.to_string()))?;
    let free = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if free == 0 {
        return Err(HugepagesUnavailable::NoneFree);
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
    {
        return Err(HugepagesUnavailable::NotMounted);
    }
    Ok(free)
}

/// Redirects fd 2 to /dev/null while alive; restores it on drop.
struct StderrSilencer(Option<libc::c_int>);

impl StderrSilencer {
    fn new() -> Self {
        // Keep stderr when debugging DPDK itself.
        if std::env::var_os("SLUICE_EAL_STDERR").is_some() {
            return StderrSilencer(None);
        }
        // SAFETY: plain fd syscalls on descriptors we own (the dup) or that
        // exist for the whole process (2); failures leave stderr unchanged.
        unsafe {
            let saved = libc::dup(2);
            if saved < 0 {
                return StderrSilencer(None);
            }
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if null < 0 {
                libc::close(saved);
                return StderrSilencer(None);
            }
            libc::dup2(null, 2);
            libc::close(null);
            StderrSilencer(Some(saved))
        }
    }
}

impl Drop for StderrSilencer {
    fn drop(&mut self) {
        if let Some(saved) = self.0 {
            // SAFETY: restores the saved descriptor onto 2 and closes the copy.
            unsafe {
                libc::dup2(saved, 2);
                libc::close(saved);
            }
        }
    }
}

/// The running EAL. Dropping it stops DPDK for good in this process.
#[derive(Debug)]
pub struct Eal {
    runtime_dir: Option<PathBuf>,
    /// Whether hugepages are in use.
    pub hugepages: bool,
    /// The arguments `rte_eal_init` was given.
    pub args: Vec<String>,
}

impl Eal {
    /// The EAL arguments for `cfg`, deciding on hugepages.
    pub fn args_for(cfg: &EalConfig) -> Result<(Vec<String>, bool), EalError> {
        let use_huge = match cfg.hugepages {
            HugepageMode::Never => false,
            HugepageMode::Auto => hugepages_available().is_ok(),
            HugepageMode::Required => {
                hugepages_available().map_err(EalError::NoHugepages)?;
                true
            }
        };
        let mut args = vec![
            "sluiced".to_string(),
            format!("--file-prefix={}", cfg.file_prefix),
            "-l".to_string(),
            cfg.main_core.to_string(),
        ];
        if use_huge {
            args.push("--huge-unlink".into());
        } else {
            args.push("--no-huge".into());
            args.push("-m".into());
            args.push(cfg.no_huge_memory_mb.to_string());
        }
        args.extend(cfg.extra_args.iter().cloned());
        Ok((args, use_huge))
    }

    /// Initialises the EAL. Fails with a one-line reason, never a panic.
    pub fn init(cfg: &EalConfig) -> Result<Eal, EalError> {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if *state != State::Fresh {
            return Err(EalError::AlreadyInitialized);
        }
        let (args, hugepages) = Self::args_for(cfg)?;
        let cargs: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| EalError::BadArgument(a.clone())))
            .collect::<Result<_, _>>()?;
        let mut argv: Vec<*mut libc::c_char> = cargs
            .iter()
            .map(|c| c.as_ptr() as *mut libc::c_char)
            .collect();
        argv.push(std::ptr::null_mut());
        log::install();
        log::clear_recent();
        tracing::debug!(?args, "initialising DPDK EAL");
        // About rte_eal_init below: argv is a NULL-terminated array of valid C strings that
        // outlive the call (rte_eal_init may permute argv but keeps the
        // strings; `cargs` lives until the end of this function and EAL
        // copies what it keeps). Only called once per process (STATE).
        let rc = {
            // The EAL also prints fatal alerts straight to stderr; they are
            // in our captured log too, so silence fd 2 for the call and
            // report them as one line.
            let _quiet = StderrSilencer::new();
            // SAFETY: see above: valid argv, single call per process.
            unsafe { dpdk_sys::rte_eal_init(args.len() as libc::c_int, argv.as_mut_ptr()) }
        };
        if rc < 0 {
            let code = super::errno();
            // The EAL refuses a second init for good, even after failing.
            *state = State::Cleaned;
            let line = log::last_error_line();
            if log::recent_contains("another primary process") {
                return Err(EalError::PrefixInUse {
                    prefix: cfg.file_prefix.clone(),
                });
            }
            let line = line.map(|l| {
                l.trim_start_matches("EAL: ")
                    .trim_start_matches("FATAL: ")
                    .to_string()
            });
            let reason = match (code, line) {
                (0, Some(l)) => l,
                (_, Some(l)) => format!("{} ({l})", super::strerror(code)),
                (_, None) => super::strerror(code),
            };
            return Err(EalError::InitFailed { reason });
        }
        *state = State::Running;
        // SAFETY: returns a pointer to a static NUL-terminated path.
        let runtime_dir = unsafe {
            let p = dpdk_sys::rte_eal_get_runtime_dir();
            (!p.is_null()).then(|| PathBuf::from(CStr::from_ptr(p).to_string_lossy().into_owned()))
        };
        Ok(Eal {
            runtime_dir,
            hugepages,
            args,
        })
    }

    /// TSC ticks per second.
    pub fn tsc_hz(&self) -> u64 {
        // SAFETY: valid after EAL init.
        unsafe { dpdk_sys::rte_get_tsc_hz() }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the EAL is running (we only exist after a successful
        // init); all ports and pools are closed by their owners first
        // (they borrow nothing from us, so the caller orders the drops).
        let rc = unsafe { dpdk_sys::rte_eal_cleanup() };
        if rc != 0 {
            tracing::warn!(
                "rte_eal_cleanup failed: {}",
                super::strerror(super::errno())
            );
        }
        *state = State::Cleaned;
        if let Some(dir) = &self.runtime_dir {
            // Leave nothing of this prefix behind (lock file, sockets).
            if let Err(e) = std::fs::remove_dir_all(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!("cannot remove {}: {e}", dir.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_huge_args_include_memory() {
        let cfg = EalConfig {
            hugepages: HugepageMode::Never,
            file_prefix: "t1".into(),
            extra_args: vec!["--log-level=8".into()],
            ..Default::default()
        };
        let (args, huge) = Eal::args_for(&cfg).unwrap();
        assert!(!huge);
        assert_eq!(
            args,
            [
                "sluiced",
                "--file-prefix=t1",
                "-l",
                "0",
                "--no-huge",
                "-m",
                "512",
                "--log-level=8"
            ]
        );
    }

    #[test]
    fn hugepage_mode_parses() {
        assert_eq!("auto".parse::<HugepageMode>(), Ok(HugepageMode::Auto));
        assert_eq!(
            "required".parse::<HugepageMode>(),
            Ok(HugepageMode::Required)
        );
        assert!("sometimes".parse::<HugepageMode>().is_err());
    }
}
