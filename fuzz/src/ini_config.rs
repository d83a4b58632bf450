//! Target `ini_config`: sluiced's configuration file
//! (`sluice_datapath::config::Config::parse`) on arbitrary text.
//!
//! Invariants: parsing never panics; it is deterministic (the same text
//! gives the same config or the same error); an error is a non-empty
//! sentence that names the file; a config that parses passes the host
//! checks without panicking. The CPU-list parser (`cores = 1-3,5`) gets
//! each line's value too.

use sluice_datapath::config::{parse_cpu_list, Config};

/// Feeds `data` (lossily decoded as UTF-8) to the config parser.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let first = Config::parse(&text, "fuzz.ini");
    let second = Config::parse(&text, "fuzz.ini");
    assert_eq!(first, second, "parsing is not deterministic");
    match first {
        Ok(c) => {
            let _ = c.check_node_type();
            let _ = c.check_cores(&[0, 1, 2, 3]);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.trim().is_empty(), "empty error for {text:?}");
            assert!(
                msg.contains("fuzz.ini"),
                "the error does not name the file: {msg}"
            );
        }
    }
    for line in text.lines() {
        if let Some((_, v)) = line.split_once('=') {
            if let Ok(cpus) = parse_cpu_list(v) {
                // A list is non-empty, sorted, without repeats, and each
                // range is at most 4097 CPUs wide.
                assert!(!cpus.is_empty(), "empty CPU list from {v:?}");
                assert!(
                    cpus.windows(2).all(|w| w[0] < w[1]),
                    "CPU list {cpus:?} from {v:?} is not strictly increasing"
                );
                let items = v.split(',').filter(|p| !p.trim().is_empty()).count();
                assert!(cpus.len() <= items * 4097, "{v:?} gave {} CPUs", cpus.len());
            }
        }
    }
}
