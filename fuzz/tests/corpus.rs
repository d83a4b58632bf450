//! Replays every committed corpus input (`corpus/<target>/*`) and every
//! crash reproducer (`regressions/<target>/*`) through its target, without
//! instrumentation: what the fuzzer found stays fixed in a plain
//! `cargo test`.

use std::path::Path;

fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut n = 0;
    for target in sluice_fuzz::TARGETS {
        let d = root.join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            eprintln!("{target}: {}", f.display());
            assert!(sluice_fuzz::run_target(target, &data));
            n += 1;
        }
    }
    n
}

#[test]
fn corpora_replay_without_a_finding() {
    let n = replay("corpus");
    assert!(n > 0, "no corpus found under fuzz/corpus");
}

#[test]
fn crash_reproducers_stay_fixed() {
    replay("regressions");
}

/// The packet path's reproducers also on a new datapath each (the fuzzer
/// keeps one datapath from input to input; see `packet_path::run`).
#[test]
fn packet_path_reproducers_stay_fixed_alone() {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/packet_path");
    let mut n = 0;
    for e in std::fs::read_dir(&d).unwrap() {
        let f = e.unwrap().path();
        eprintln!("packet_path (new datapath): {}", f.display());
        sluice_fuzz::packet_path::run_fresh(&std::fs::read(&f).unwrap());
        n += 1;
    }
    assert!(n > 0, "no reproducer under {}", d.display());
}
