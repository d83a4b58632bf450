//! DPDK's log, routed into `tracing`.
//!
//! DPDK writes its log to a stdio `FILE*`. We hand it one made with glibc's
//! `fopencookie` whose write callback splits the text into lines, emits each
//! as a `tracing` event (target `dpdk`, at debug level), and remembers the
//! last few lines so that a failing call can be reported as one line that
//! includes DPDK's own reason ("EAL: Cannot create lock on ...").
//!
//! Thread-safety: the callback may run on any thread; the line buffer is
//! behind a mutex. It is only written when DPDK logs, which never happens
//! per packet.

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many recent DPDK log lines are kept for error messages.
const KEEP_LINES: usize = 16;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
static PARTIAL: Mutex<String> = Mutex::new(String::new());

fn push_line(line: &str) {
    let line = line.trim_end();
    if line.is_empty() {
        return;
    }
    tracing::debug!(target: "dpdk", "{line}");
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    if recent.len() == KEEP_LINES {
        recent.pop_front();
    }
    recent.push_back(line.to_string());
}

fn write_text(text: &str) {
    let mut partial = PARTIAL.lock().unwrap_or_else(|e| e.into_inner());
    partial.push_str(text);
    while let Some(nl) = partial.find('\n') {
        let line: String = partial.drain(..=nl).collect();
        push_line(&line);
    }
}

/// Forgets the remembered lines (before a call whose failure we report).
pub fn clear_recent() {
    RECENT.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Whether any remembered DPDK log line contains `needle`.
pub fn recent_contains(needle: &str) -> bool {
    RECENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|l| l.contains(needle))
}

/// The most informative recent DPDK log line: the last one that looks
/// like an error, else the last one.
pub fn last_error_line() -> Option<String> {
    let recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    let is_err = |l: &&String| {
        let l = l.to_ascii_lowercase();
        [
            "cannot", "error", "fail", "invalid", "not ", "unable", "no ",
        ]
        .iter()
        .any(|w| l.contains(w))
    };
    recent
        .iter()
        .rev()
        .find(is_err)
        .or_else(|| recent.back())
        .cloned()
}

unsafe extern "C" fn log_write(buf: *const libc::c_char, size: usize) {
    if buf.is_null() {
        return;
    }
    // SAFETY: stdio passes a buffer of `size` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf as *const u8, size) };
    write_text(&String::from_utf8_lossy(bytes));
}

/// Points DPDK's log at `tracing`. Call before `rte_eal_init` so that the
/// EAL's own messages are captured too. Idempotent.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: our C helper builds a line-buffered write-only stream
        // (glibc fopencookie) calling `log_write`, which is valid for the
        // whole process; DPDK keeps the FILE pointer.
        unsafe {
            let f = dpdk_sys::sluice_log_stream(Some(log_write));
            if !f.is_null() {
                dpdk_sys::rte_openlog_stream(f);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_errors_preferred() {
        clear_recent();
        write_text("EAL: Detected CPU lcores: 2\nEAL: Cannot create lock on '/x'");
        assert_eq!(
            last_error_line().as_deref(),
            Some("EAL: Detected CPU lcores: 2")
        );
        write_text(". Is another primary process running?\nEAL: FATAL: Cannot init config\n");
        assert_eq!(
            last_error_line().as_deref(),
            Some("EAL: FATAL: Cannot init config")
        );
        let recent = RECENT.lock().unwrap().clone();
        assert!(recent
            .iter()
            .any(|l| l == "EAL: Cannot create lock on '/x'. Is another primary process running?"));
    }
}
