//! Connections that outlive the process (`[datapath] state_file`): at
//! start, the saved connections are put back before the PMDs forward; a
//! thread rewrites the file every `state_interval_ms` (write to a temporary
//! name private to the process, then rename: a reader never sees half a
//! file, and two processes during a hand-over never share a temporary);
//! a clean stop saves once more. So after a crash (SIGKILL, OOM) the next
//! sluiced loses at most the connections opened in the last interval, and
//! after a clean restart none; established ones keep their NAT, their
//! endpoint and their TCP state. The Services' session-affinity entries
//! are saved too; restored ones wait (with their lifetimes running) until
//! their Service is programmed again, and the saver thread puts them back
//! then. A file that does not decode (corrupt, truncated, a format this
//! build does not read) is moved aside as `FILE.bad` with one log line and
//! the table starts empty.
//!
//! The same encoding carries the state of a hand-over restart (see
//! `handover`), written by [`save`] to a file the new process names.
//!
//! Thread-safety: the saver thread reads the shared table as dumps do; it
//! skips its rounds while `paused` (a hand-over released the ports: the
//! new process owns the file from then on, unless it rolls back).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conntrack::state::{self, Restored};
use crate::conntrack::Conntrack;
use crate::service::{AffinityEntry, Services};
use crate::time::{clock_ns, Nanos};

/// What a crash restore did.
#[derive(Debug, Clone, Default)]
pub struct CrashRestore {
    /// Connections restored and skipped.
    pub restored: Restored,
    /// Bytes read.
    pub bytes: usize,
    /// Age of the file, ms.
    pub age_ms: u64,
    /// Time to decode and restore, ms.
    pub took_ms: f64,
    /// Affinity entries waiting for their Services, with their deadlines
    /// on this process's clock.
    pub affinity: Vec<(AffinityEntry, Nanos)>,
}

/// Puts back the connections saved in `path`, if any.
pub fn restore(path: &Path, ct: &Conntrack) -> Option<CrashRestore> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                "cannot read saved connections {}: {e}; starting empty",
                path.display()
            );
            return None;
        }
    };
    let t0 = Instant::now();
    match state::decode(&data) {
        Ok(saved) => {
            let now = clock_ns();
            let r = ct.restore(&saved, now);
            let age_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                .saturating_sub(saved.saved_at_unix_ns)
                / 1_000_000;
            let took_ms = t0.elapsed().as_secs_f64() * 1e3;
            tracing::info!(
                "restored {} connections ({} skipped) from {} ({} bytes, saved {age_ms} ms ago) in {took_ms:.1} ms; {} affinity entries wait for their Services",
                r.restored,
                r.skipped,
                path.display(),
                data.len(),
                saved.affinity.len()
            );
            Some(CrashRestore {
                restored: r,
                bytes: data.len(),
                age_ms,
                took_ms,
                affinity: saved
                    .affinity
                    .into_iter()
                    .map(|a| {
                        let d = now.saturating_add(a.remaining);
                        (a, d)
                    })
                    .collect(),
            })
        }
        Err(e) => {
            let bad = bad_path(path);
            let _ = std::fs::rename(path, &bad);
            tracing::warn!(
                "discarded saved connections {} ({e}); moved to {}; starting empty",
                path.display(),
                bad.display()
            );
            None
        }
    }
}

fn bad_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".bad");
    PathBuf::from(s)
}

/// The live connections of `ct` and the affinity entries of `services`.
pub fn snapshot(ct: &Conntrack, services: Option<&Services>) -> state::SavedState {
    snapshot_where(ct, services, |_| true)
}

/// [`snapshot`] of the connections whose original key `keep` accepts.
pub fn snapshot_where(
    ct: &Conntrack,
    services: Option<&Services>,
    keep: impl Fn(&crate::conntrack::ConnKey) -> bool,
) -> state::SavedState {
    let now = clock_ns();
    let mut saved = state::save_where(ct, now, keep);
    if let Some(s) = services {
        saved.affinity = s.affinity_entries(now);
    }
    saved
}

/// Writes the live connections of `ct` (and the affinity entries of
/// `services`) to `path` atomically; returns (connections, affinity
/// entries, bytes).
///
/// # Errors
/// The I/O error.
pub fn save(
    path: &Path,
    ct: &Conntrack,
    services: Option<&Services>,
) -> std::io::Result<(usize, usize, usize)> {
    write(path, &snapshot(ct, services))
}

/// Writes `saved` to `path` atomically; returns (connections, affinity
/// entries, bytes).
///
/// # Errors
/// The I/O error.
pub fn write(path: &Path, saved: &state::SavedState) -> std::io::Result<(usize, usize, usize)> {
    // `SLUICED_TEST_STATE_VERSION` makes this build write an older format
    // (what the previous release writes), to test upgrades end to end.
    let version = std::env::var("SLUICED_TEST_STATE_VERSION")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|v| (1..=state::VERSION).contains(v))
        .unwrap_or(state::VERSION);
    let bytes = state::encode_version(saved, version);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok((saved.conns.len(), saved.affinity.len(), bytes.len()))
}

/// Puts back the affinity entries whose Service exists; keeps the others
/// (until their deadline passes).
pub fn restore_pending(pending: &mut Vec<(AffinityEntry, Nanos)>, services: &Services) -> usize {
    let now = clock_ns();
    let mut done = 0;
    pending.retain_mut(|(a, deadline)| {
        if *deadline <= now {
            return false;
        }
        a.remaining = *deadline - now;
        if services.restore_affinity(std::slice::from_ref(a), now) == 1 {
            done += 1;
            return false;
        }
        true
    });
    done
}

/// The saver thread's inputs.
#[derive(Debug)]
pub struct Saver {
    /// The file.
    pub path: PathBuf,
    /// The connections.
    pub ct: Conntrack,
    /// The Services (affinity).
    pub services: Services,
    /// How often.
    pub every: Duration,
    /// Stops the thread.
    pub stop: Arc<AtomicBool>,
    /// Skips rounds while set.
    pub paused: Arc<AtomicBool>,
    /// Restored affinity entries waiting for their Services.
    pub pending: Vec<(AffinityEntry, Nanos)>,
}

/// The saver thread.
pub fn spawn_saver(mut s: Saver) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("state-saver".into())
        .spawn(move || {
            let mut failing = false;
            while !s.stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(s.every);
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                if !s.pending.is_empty() {
                    let n = restore_pending(&mut s.pending, &s.services);
                    if n > 0 {
                        tracing::info!("restored {n} Service affinity entries");
                    }
                }
                if s.paused.load(Ordering::Relaxed) {
                    continue;
                }
                match save(&s.path, &s.ct, Some(&s.services)) {
                    Ok(_) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("cannot save connections to {}: {e}", s.path.display());
                    }
                    Err(_) => {}
                }
            }
        })
}
