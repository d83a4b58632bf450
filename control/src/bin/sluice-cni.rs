//! `sluice-cni`: the CNI plugin binary (installed as `/opt/cni/bin/sluice`).
//! Reads the `CNI_*` environment and the network configuration on stdin,
//! runs one command ([`sluice_control::cni::run`]), prints the result or
//! the spec's error object on stdout and exits 0 or 1. Diagnostics (rollback
//! failures) go to stderr, which runtimes log.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => sluice_control::cni::run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => sluice_control::cni::Outcome {
            stdout: Some(
                sluice_control::cni::spec::CniError::new(
                    sluice_control::cni::spec::code::IO,
                    "could not read the network configuration from stdin",
                    e.to_string(),
                )
                .to_json(sluice_control::cni::spec::DEFAULT_VERSION),
            ),
            exit: 1,
        },
    };
    if let Some(v) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
    std::process::exit(outcome.exit);
}
