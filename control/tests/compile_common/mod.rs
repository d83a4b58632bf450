//! What the compiler's tests (`compile.rs`, `compile_incremental.rs`)
//! share: golden files under `tests/golden/` and a replica of a node's
//! rows holding one row the typed rows refuse.
//!
//! Invariants: a golden mismatch fails with a line diff and the command
//! that rewrites the file; `SLUICE_UPDATE_GOLDEN=1` rewrites instead of
//! comparing. Thread-safety: plain functions (each golden file is written
//! by one test).

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::PathBuf;

use nestdb_client::{Datum, Replica, RowChange, TableRow};
use sluice_control::agent::compile::NodeRows;
use sluice_testkit::rows::{uuid, Dump};

/// Compares `text` with `tests/golden/NAME.txt` (test binary `test`), or
/// rewrites the file when `SLUICE_UPDATE_GOLDEN=1`.
pub fn check_golden(test: &str, name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; create it with SLUICE_UPDATE_GOLDEN=1 cargo test -p sluice-control --test {test}",
            path.display()
        )
    });
    if want != text {
        panic!(
            "{name}: the output differs from {} (- golden, + now); if the change is intended, rewrite it with SLUICE_UPDATE_GOLDEN=1 cargo test -p sluice-control --test {test}:\n{}",
            path.display(),
            line_diff(&want, text)
        );
    }
}

/// A line diff (longest common subsequence), `-` expected, `+` actual.
pub fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut l = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            l[i][j] = if a[i] == b[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || l[i][j + 1] >= l[i + 1][j]) {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", a[i]);
            i += 1;
        }
    }
    out
}

/// A replica loaded with `rows` and one more Endpoint (UUID 77) that the
/// schema accepts but the typed rows refuse (its address is no address),
/// with the changes the load reported.
pub fn replica_with_a_bad_endpoint(rows: &NodeRows) -> (Replica, Vec<RowChange>) {
    let mut dump = Dump::default();
    dump.put(&rows.node_config)
        .put(&rows.logical_ports)
        .put(&rows.services)
        .put(&rows.service_ports)
        .put(&rows.endpoints)
        .put(&rows.remote_nodes);
    let mut bad = rows.endpoints[0].1.to_row();
    bad.insert("ip".into(), Datum::from("10.244.1.300"));
    dump.put_row("Endpoint", uuid(77), &bad);
    dump.replica()
}
