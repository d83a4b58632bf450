//! The control socket: the shared unixctl server of `sluice-jsonrpc`, so
//! `ovs-appctl -t <socket> <cmd>` works against nestdb-server.
//!
//! Commands: `exit`, `compact`/`ovsdb-server/compact [DB]`, `list-dbs`/
//! `ovsdb-server/list-dbs`, `stats`/`memory/show`, `list-commands`,
//! `version`. Each is a registration in the server's [`Registry`]; its
//! handler runs on a control connection thread, while the state it reads
//! or changes lives on the event loop. So a handler posts a [`Command`] to
//! the loop, wakes it through a socket pair the loop polls
//! ([`ControlSocket::wake_fd`]), and waits at most [`COMMAND_TIMEOUT`] for
//! the answer. The loop takes posted commands with
//! [`ControlSocket::take_posted`] and runs them against anything that
//! implements [`Control`] (the server does), so this module depends on that
//! narrow trait and not on the server.
//!
//! Access: the socket file has mode `0660` and any peer that can open it
//! may run commands, as before the shared server (and as in OVS).
//!
//! Thread-safety: [`ControlSocket`] belongs to the event-loop thread; the
//! handlers it registers are `Send + Sync` and only post to a channel.
//! Dropping it first closes the channel (a handler waiting for an answer
//! gets "shutting down" at once), then stops the server.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use sluice_jsonrpc::unixctl::{
    AllowedPeers, CommandHandler, CtlError, CtlServer, Registry, ServerConfig,
};

/// How long a control command waits for the event loop to run it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What the control commands need from the server. Implemented by the
/// server, on its event loop.
pub trait Control {
    /// Requests a clean exit after this loop iteration.
    fn request_exit(&mut self);
    /// Compacts one database (or all with `None`).
    ///
    /// # Errors
    /// A sentence saying which database could not be compacted and why.
    fn compact(&mut self, db: Option<&str>) -> Result<(), String>;
    /// Names of served databases (including `_Server`), in serving order.
    fn db_names(&self) -> Vec<String>;
    /// Human-readable statistics.
    fn stats_text(&self) -> String;
}

/// A control command the event loop runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Exit after this loop iteration.
    Exit,
    /// Compact one database, or all.
    Compact(Option<String>),
    /// List the served databases.
    ListDbs,
    /// Show statistics.
    Stats,
}

impl Command {
    /// Runs the command; `Ok` text is the reply, `Err` text an error reply.
    ///
    /// # Errors
    /// The target's error text (compaction only).
    pub fn run(&self, target: &mut dyn Control) -> Result<String, String> {
        match self {
            Command::Exit => {
                target.request_exit();
                Ok(String::new())
            }
            Command::Compact(db) => target.compact(db.as_deref()).map(|()| String::new()),
            Command::ListDbs => Ok(target.db_names().iter().map(|n| format!("{n}\n")).collect()),
            Command::Stats => Ok(target.stats_text()),
        }
    }
}

/// A command waiting for the event loop, with where its answer goes.
#[derive(Debug)]
pub struct Posted {
    /// The command.
    pub command: Command,
    reply: Option<SyncSender<Result<String, String>>>,
}

impl Posted {
    /// Sends the answer to the waiting handler (if it still waits).
    pub fn answer(self, outcome: Result<String, String>) {
        if let Some(reply) = self.reply {
            // The handler may have timed out and gone; that is fine.
            let _ = reply.send(outcome);
        }
    }
}

/// Posts commands to the event loop and wakes it.
#[derive(Debug)]
struct Poster {
    queue: Sender<Posted>,
    wake: UnixStream,
}

impl Poster {
    fn post(&self, command: Command, reply: Option<SyncSender<Result<String, String>>>) -> bool {
        if self.queue.send(Posted { command, reply }).is_err() {
            return false;
        }
        // Nonblocking: if the socket buffer is full the loop is already due
        // to wake up and drain the queue.
        let _ = (&self.wake).write(&[1]);
        true
    }

    /// Posts `command` and waits, bounded, for the loop's answer.
    fn call(&self, name: &str, command: Command) -> Result<String, String> {
        let shutting_down = || "nestdb-server is shutting down; the command did not run".to_owned();
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.post(command, Some(tx)) {
            return Err(shutting_down());
        }
        match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(outcome) => outcome,
            Err(RecvTimeoutError::Disconnected) => Err(shutting_down()),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "nestdb-server's event loop did not run \"{name}\" within {} s; it may be busy with a large transaction or compaction, see its log",
                COMMAND_TIMEOUT.as_secs()
            )),
        }
    }
}

/// The running control socket, owned by the event loop.
#[derive(Debug)]
pub struct ControlSocket {
    // Declared (and so dropped) before `server`: closing the queue first
    // releases handlers waiting for an answer, so stopping the server does
    // not wait for them to time out.
    queue: Receiver<Posted>,
    wake: UnixStream,
    server: CtlServer,
}

impl ControlSocket {
    /// Creates the socket at `path` (mode `0660`) and starts serving the
    /// nestdb commands; requests larger than `max_message_bytes` are refused.
    ///
    /// # Errors
    /// [`CtlError`] if the socket cannot be created or is in use.
    pub fn start(path: &Path, max_message_bytes: usize) -> Result<Self, CtlError> {
        let socket_err = |source| CtlError::Socket {
            action: "set up the wake-up pair of",
            path: path.to_path_buf(),
            source,
        };
        let (wake_tx, wake) = UnixStream::pair().map_err(socket_err)?;
        wake_tx.set_nonblocking(true).map_err(socket_err)?;
        wake.set_nonblocking(true).map_err(socket_err)?;
        let (queue_tx, queue) = mpsc::channel();
        let poster = Arc::new(Poster {
            queue: queue_tx,
            wake: wake_tx,
        });
        let registry = registry(&poster)?;
        let config = ServerConfig {
            program: "nestdb-server".to_owned(),
            socket_mode: 0o660,
            allowed_peers: AllowedPeers::Any,
            max_message_bytes,
            ..ServerConfig::with_path(path)
        };
        let server = CtlServer::start(config, registry, move || {
            poster.post(Command::Exit, None);
        })?;
        Ok(Self {
            queue,
            wake,
            server,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.server.path()
    }

    /// The descriptor the event loop polls for readability: posted
    /// commands are waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Clears the wake-up and returns every command posted so far; the loop
    /// runs each and calls [`Posted::answer`].
    pub fn take_posted(&self) -> Vec<Posted> {
        let mut buf = [0u8; 256];
        loop {
            match (&self.wake).read(&mut buf) {
                Ok(n) if n == buf.len() => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Drained (`WouldBlock`), or the pair is gone with the poster.
                _ => break,
            }
        }
        self.queue.try_iter().collect()
    }
}

/// The nestdb commands, each posting to the loop through `poster`.
fn registry(poster: &Arc<Poster>) -> Result<Registry, CtlError> {
    let registry = Registry::with_version(format!("nestdb-server {}", env!("CARGO_PKG_VERSION")));
    type Make = fn(&[String]) -> Command;
    let compact: Make = |args| Command::Compact(args.first().cloned());
    let list_dbs: Make = |_| Command::ListDbs;
    let stats: Make = |_| Command::Stats;
    let commands: [(&str, &str, usize, Make); 6] = [
        ("compact", "[DB]", 1, compact),
        ("ovsdb-server/compact", "[DB]", 1, compact),
        ("list-dbs", "", 0, list_dbs),
        ("ovsdb-server/list-dbs", "", 0, list_dbs),
        ("stats", "", 0, stats),
        ("memory/show", "", 0, stats),
    ];
    for (name, usage, max_args, make) in commands {
        let poster = Arc::clone(poster);
        let handler: CommandHandler =
            Arc::new(move |args: &[String]| poster.call(name, make(args)));
        registry
            .register(name, usage, 0, max_args, handler)
            .map_err(|e| CtlError::InvalidConfig {
                reason: e.to_string(),
            })?;
    }
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use sluice_jsonrpc::client::{ClientError, ConnectOptions, Connection, Endpoint};

    #[derive(Default)]
    struct Fake {
        exit: bool,
        compacted: Vec<Option<String>>,
    }

    impl Control for Fake {
        fn request_exit(&mut self) {
            self.exit = true;
        }
        fn compact(&mut self, db: Option<&str>) -> Result<(), String> {
            if db == Some("Nope") {
                return Err("Nope: unknown database".into());
            }
            self.compacted.push(db.map(str::to_owned));
            Ok(())
        }
        fn db_names(&self) -> Vec<String> {
            vec!["_Server".into(), "Test".into()]
        }
        fn stats_text(&self) -> String {
            "sessions:0\n".into()
        }
    }

    /// Runs the fake event loop until it has answered `n` commands.
    fn serve(ctl: &ControlSocket, fake: &mut Fake, n: usize) {
        let mut done = 0;
        while done < n {
            let mut fds = [libc::pollfd {
                fd: ctl.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid, initialised pollfd that outlives the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 30_000) };
            assert!(rc > 0, "no command posted within 30 s");
            for posted in ctl.take_posted() {
                let outcome = posted.command.run(fake);
                posted.answer(outcome);
                done += 1;
            }
        }
    }

    fn call(conn: &Connection, method: &str, params: Value) -> Result<Value, String> {
        conn.call(method, params).map_err(|e| match e {
            ClientError::Rpc { error, .. } => error.as_str().unwrap_or_default().to_owned(),
            other => panic!("{other}"),
        })
    }

    #[test]
    fn commands_are_posted_to_the_loop_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = ControlSocket::start(&dir.path().join("n.ctl"), 1 << 20).unwrap();
        let endpoint = Endpoint::Unix(ctl.path().to_path_buf());
        let options = ConnectOptions::new(Some(Duration::from_secs(30)));
        let (conn, _) = Connection::open(&endpoint, options).unwrap();
        let conn = Arc::new(conn);
        let mut fake = Fake::default();
        // Built-ins do not need the loop.
        assert_eq!(
            call(&conn, "version", json!([])),
            Ok(json!(format!(
                "nestdb-server {}\n",
                env!("CARGO_PKG_VERSION")
            )))
        );
        let text = call(&conn, "list-commands", json!([])).unwrap();
        for name in ["ovsdb-server/compact", "memory/show", "list-dbs", "exit"] {
            assert!(text.as_str().unwrap().contains(name), "{text}");
        }
        assert!(call(&conn, "frob", json!([]))
            .unwrap_err()
            .contains("not a valid command"));
        assert!(call(&conn, "list-dbs", json!(["x"]))
            .unwrap_err()
            .contains("at most 0 arguments"));
        // Loop commands: the client waits until the loop answers.
        let client = {
            let conn = Arc::clone(&conn);
            std::thread::spawn(move || {
                (
                    call(&conn, "ovsdb-server/list-dbs", json!([])),
                    call(&conn, "compact", json!(["Test"])),
                    call(&conn, "ovsdb-server/compact", json!(["Nope"])),
                    call(&conn, "memory/show", json!([])),
                    call(&conn, "exit", json!([])),
                )
            })
        };
        serve(&ctl, &mut fake, 5);
        let (dbs, compact, nope, stats, exit) = client.join().unwrap();
        assert_eq!(dbs, Ok(json!("_Server\nTest\n")));
        assert_eq!(compact, Ok(json!("")));
        assert_eq!(nope, Err("Nope: unknown database\n".to_owned()));
        assert_eq!(stats, Ok(json!("sessions:0\n")));
        assert_eq!(exit, Ok(json!("")));
        assert!(fake.exit);
        assert_eq!(fake.compacted, vec![Some("Test".to_owned())]);
        let mode = std::fs::metadata(ctl.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o660
        );
    }

    #[test]
    fn a_waiting_command_fails_at_once_when_the_loop_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.ctl");
        let ctl = ControlSocket::start(&path, 1 << 20).unwrap();
        let endpoint = Endpoint::Unix(path.clone());
        let (conn, _) = Connection::open(&endpoint, ConnectOptions::new(None)).unwrap();
        let client = std::thread::spawn(move || call(&conn, "stats", json!([])));
        // Wait until the command is posted, then stop without answering.
        let mut fds = [libc::pollfd {
            fd: ctl.wake_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid, initialised pollfd that outlives the call.
        assert!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 30_000) } > 0);
        drop(ctl);
        let err = client.join().unwrap().unwrap_err();
        assert!(err.contains("shutting down"), "{err}");
        assert!(!path.exists(), "the socket is removed on stop");
    }
}
