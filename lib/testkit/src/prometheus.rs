//! Reading and checking a Prometheus text exposition (what sluiced's and
//! nestdb-server's metrics endpoints serve) in tests: one sample's value,
//! and `promtool check metrics` (Debian's prometheus package) as the
//! referee of the format. Thread-safety: plain functions.

use std::io::Write;
use std::process::{Command, Stdio};

/// The value of the sample whose name and labels are `series` (the text up
/// to the value, e.g. `nestdb_rows{db="Test"} `); panics with the whole
/// exposition when there is none.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Runs `promtool check metrics` on `text` and asserts that it accepts it.
/// Returns `Err` with the reason when promtool cannot be run (not
/// installed): nothing was checked, and the caller records the skip.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("promtool check metrics not run: {e} (install Debian's prometheus package)")
        })?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
