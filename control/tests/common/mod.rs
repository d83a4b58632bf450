//! A `sluiced` control socket for end-to-end tests: the real [`CtlServer`]
//! in a temporary directory, with every documented command name registered
//! to a handler that records its arguments and echoes them back.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use sluice_datapath::ctl::{CtlServer, Registry, ServerConfig};

/// The command names, usages and argument bounds of the `ctl` module docs.
pub const COMMANDS: &[(&str, &str, usize, usize)] = &[
    ("add-flow", "FLOW", 1, 1),
    ("del-flows", "[--strict] [MATCH]", 0, 2),
    ("mod-flows", "[--strict] FLOW", 1, 2),
    ("dump-flows", "[table=N] [MATCH]", 0, 2),
    ("trace", "FLOW|HEXPACKET", 1, 1),
    ("dump-ports", "[PORT]", 0, 1),
    ("pmd-stats-show", "", 0, 0),
    ("pmd-stats-clear", "", 0, 0),
    ("dump-cache", "", 0, 0),
    ("capture", "PORT FILE [COUNT]", 2, 3),
    ("dump-conntrack", "[zone=N]", 0, 1),
    ("flush-conntrack", "[zone=N]", 0, 1),
    ("conntrack-stats", "", 0, 0),
    ("dump-services", "", 0, 0),
    ("dump-tunnels", "", 0, 0),
    ("dump-neighbours", "", 0, 0),
    ("flush-neighbours", "", 0, 0),
    ("echo", "[ARG...]", 0, 4),
];

/// One recorded request.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Command(String, Vec<String>),
    Method(String, Value),
}

/// A running test server; stops and cleans up on drop.
pub struct TestDaemon {
    pub server: CtlServer,
    pub registry: Registry,
    pub calls: Arc<Mutex<Vec<Call>>>,
    dir: tempfile::TempDir,
}

impl TestDaemon {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let registry = Registry::with_version("sluiced (Sluice) e2e");
        let calls = Arc::new(Mutex::new(Vec::new()));
        for &(name, usage, min, max) in COMMANDS {
            let calls = calls.clone();
            let owned = name.to_owned();
            registry
                .register(
                    name,
                    usage,
                    min,
                    max,
                    Arc::new(move |args: &[String]| {
                        calls
                            .lock()
                            .unwrap()
                            .push(Call::Command(owned.clone(), args.to_vec()));
                        Ok(format!("{owned}({})", args.join("|")))
                    }),
                )
                .expect("register test command");
        }
        registry
            .register(
                "fail",
                "",
                0,
                0,
                Arc::new(|_: &[String]| Err("flow table 3 is full\nremove flows first".into())),
            )
            .unwrap();
        for name in ["flow-bundle", "dump-ports"] {
            let calls = calls.clone();
            let owned = name.to_owned();
            registry
                .register_method(
                    name,
                    Arc::new(move |params: &Value| {
                        calls
                            .lock()
                            .unwrap()
                            .push(Call::Method(owned.clone(), params.clone()));
                        Ok(json!({"method": owned, "params": params}))
                    }),
                )
                .unwrap();
        }
        let config = ServerConfig::with_path(dir.path().join("run/sluiced.ctl"));
        let server = CtlServer::start(config, registry.clone(), || {}).expect("start ctl server");
        Self {
            server,
            registry,
            calls,
            dir,
        }
    }

    pub fn socket(&self) -> &Path {
        self.server.path()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn last_call(&self) -> Option<Call> {
        self.calls.lock().unwrap().last().cloned()
    }

    pub fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}
