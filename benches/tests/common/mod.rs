//! What the benches' integration tests share: whether they may run (root,
//! a `sluiced` binary) and how a skip is reported.

use std::path::PathBuf;

/// True when running as root (DPDK and hugepages need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The `sluiced` binary: `$SLUICED`, else a release or debug build in
/// `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn sluiced() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICED") {
        return Some(PathBuf::from(p));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let targets = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace.join("target")]);
    targets
        .flat_map(|t| [t.join("release/sluiced"), t.join("debug/sluiced")])
        .find(|p| p.exists())
}

/// Prints why `test` is skipped and appends it to `target/tmp/skips.txt`,
/// which `scripts/test.sh` prints at the end (a skip is never silent).
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIP {test}: {why}");
    println!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skips.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write as _;
        let _ = writeln!(f, "{line}");
    }
}

/// The `sluiced` binary when `test` can run (root, a built binary);
/// otherwise records why it is skipped and returns `None`.
pub fn sluiced_for(test: &str) -> Option<PathBuf> {
    if !is_root() {
        skip(test, "needs root (DPDK, hugepages)");
        return None;
    }
    let bin = sluiced();
    if bin.is_none() {
        skip(
            test,
            "no sluiced binary (set SLUICED or build it with `cargo build -p sluice-datapath --bin sluiced`)",
        );
    }
    bin
}
