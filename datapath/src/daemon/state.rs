//! Connections that outlive the process (`[datapath] state_file`): at
//! start, the saved connections are put back before the PMDs forward; a
//! thread rewrites the file every `state_interval_ms` (write to a temporary
//! name, then rename: a reader never sees half a file); a clean stop saves
//! once more. So after a crash (SIGKILL, OOM) the next sluiced loses at most
//! the connections opened in the last interval, and after a clean restart
//! none; established ones keep their NAT, their endpoint and their TCP
//! state. A file that does not decode (corrupt, truncated, a format this
//! build does not read) is moved aside as `FILE.bad` with one log line and
//! the table starts empty.
//!
//! Thread-safety: the saver thread reads the shared table as dumps do.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conntrack::state::{self, Restored};
use crate::conntrack::Conntrack;
use crate::time::clock_ns;

/// Puts back the connections saved in `path`, if any.
pub fn restore(path: &Path, ct: &Conntrack) -> Option<Restored> {
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
            let r = ct.restore(&saved, clock_ns());
            let age_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                .saturating_sub(saved.saved_at_unix_ns)
                / 1_000_000;
            tracing::info!(
                "restored {} connections ({} skipped) from {} ({} bytes, saved {age_ms} ms ago) in {:.1} ms",
                r.restored,
                r.skipped,
                path.display(),
                data.len(),
                t0.elapsed().as_secs_f64() * 1e3
            );
            Some(r)
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

/// Writes the live connections of `ct` to `path` (atomically).
///
/// # Errors
/// The I/O error.
pub fn save(path: &Path, ct: &Conntrack) -> std::io::Result<usize> {
    let saved = state::save(ct, clock_ns());
    let bytes = state::encode(&saved);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(saved.conns.len())
}

/// The saver thread.
pub fn spawn_saver(
    path: PathBuf,
    ct: Conntrack,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("state-saver".into())
        .spawn(move || {
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(every);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match save(&path, &ct) {
                    Ok(_) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("cannot save connections to {}: {e}", path.display());
                    }
                    Err(_) => {}
                }
            }
        })
}
