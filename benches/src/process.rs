//! Child processes the runner starts: line capture, bounded waits and
//! kill on drop.
//!
//! A [`Daemon`] owns exactly one child. Its stdout and stderr are read by
//! two threads into a channel of timestamped lines (so a caller can wait
//! for a readiness line, or sample periodic statistics) and into a short
//! tail kept for error messages. Dropping a [`Daemon`] sends SIGTERM to
//! that child's pid only, waits up to [`STOP_GRACE`], then SIGKILLs it:
//! the runner never signals a process it did not start. Children are also
//! started with `PR_SET_PDEATHSIG = SIGTERM`, so that they stop if the
//! runner itself is killed (Ctrl-C, SIGTERM, a crash) before it can drop
//! them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long a daemon gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines kept for error messages.
const TAIL_LINES: usize = 30;

/// Why a child could not be started or did not become ready.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// The program could not be executed.
    #[error(
        "cannot start {program}: {source} (is it installed? scripts/bench.sh installs the peers)"
    )]
    Spawn {
        /// Program path.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The child exited before it was ready.
    #[error("{name} exited ({status}) before it was ready; last output:\n{tail}")]
    Exited {
        /// Daemon name.
        name: String,
        /// Exit status.
        status: String,
        /// Last lines of its output.
        tail: String,
    },
    /// The readiness condition was not met in time.
    #[error("{name} was not ready after {waited:?} (waiting for {what}); last output:\n{tail}")]
    Timeout {
        /// Daemon name.
        name: String,
        /// What we waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// Last lines of its output.
        tail: String,
    },
    /// A helper command failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its stderr and stdout.
        output: String,
    },
}

/// One line of a child's output and when it was read.
#[derive(Debug, Clone)]
pub struct Line {
    /// When the reader thread got it.
    pub at: Instant,
    /// The text, without the newline.
    pub text: String,
}

/// A child process owned by the runner.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    lines: Receiver<Line>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

fn pump(
    src: impl Read + Send + 'static,
    tx: mpsc::Sender<Line>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    thread::spawn(move || {
        for text in BufReader::new(src).lines().map_while(Result::ok) {
            {
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text.clone());
            }
            if tx
                .send(Line {
                    at: Instant::now(),
                    text,
                })
                .is_err()
            {
                // Nobody listens any more; keep draining so the child never
                // blocks on a full pipe.
                continue;
            }
        }
    });
}

impl Daemon {
    /// Starts `cmd` (stdin from /dev/null, stdout and stderr captured).
    ///
    /// # Errors
    /// [`ProcessError::Spawn`] if it cannot be executed.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self, ProcessError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe and touches no memory
        // of the parent.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = spawn_piped(&mut cmd, program)?;
        let (tx, lines) = mpsc::channel();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            pump(out, tx.clone(), tail.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(err, tx, tail.clone());
        }
        Ok(Self {
            name: name.to_string(),
            child,
            lines,
            tail,
        })
    }

    /// The daemon's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its output, joined.
    pub fn tail(&self) -> String {
        self.tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| format!("  | {l}\n"))
            .collect()
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn exited_error(&mut self, status: ExitStatus) -> ProcessError {
        // Give the reader threads a moment to collect the last words.
        thread::sleep(Duration::from_millis(100));
        ProcessError::Exited {
            name: self.name.clone(),
            status: status.to_string(),
            tail: self.tail(),
        }
    }

    /// Waits up to `timeout` for an output line matching `pred` and
    /// returns it.
    ///
    /// # Errors
    /// [`ProcessError::Exited`] or [`ProcessError::Timeout`].
    pub fn wait_line(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<Line, ProcessError> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(self.timeout_error(what, timeout));
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if pred(&line.text) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = self.exited() {
                return Err(self.exited_error(status));
            }
        }
    }

    /// Lines read since the last call (non-blocking).
    pub fn drain(&mut self) -> Vec<Line> {
        self.lines.try_iter().collect()
    }

    /// Polls `ready` every 100 ms for up to `timeout`.
    ///
    /// # Errors
    /// [`ProcessError::Exited`] if the child dies meanwhile, else
    /// [`ProcessError::Timeout`].
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), ProcessError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(self.exited_error(status));
            }
            if ready() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(self.timeout_error(what, timeout));
            }
            // Keep the channel short while we poll.
            let _ = self.drain();
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A timeout error carrying the output tail.
    pub fn timeout_error(&self, what: &str, waited: Duration) -> ProcessError {
        ProcessError::Timeout {
            name: self.name.clone(),
            what: what.to_string(),
            waited,
            tail: self.tail(),
        }
    }

    /// Sends SIGTERM, waits up to [`STOP_GRACE`], then SIGKILLs; returns
    /// the exit status if one was collected.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been
            // reaped yet (try_wait above returned None), so the pid still
            // names that child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "pktgen: {} (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killing it",
            self.name,
            self.child.id()
        );
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Daemon {
    /// SIGKILLs the child at once and reaps it: for daemons that leave
    /// nothing behind (DPDK `--in-memory`) and take seconds to stop.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a short helper command to completion (bounded by `timeout`) and
/// returns its stdout.
///
/// # Errors
/// [`ProcessError::Spawn`], or [`ProcessError::Command`] on a non-zero exit
/// or a timeout (the helper is killed then).
pub fn run(mut cmd: Command, timeout: Duration) -> Result<String, ProcessError> {
    let text = format!("{cmd:?}").replace('"', "");
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = spawn_piped(&mut cmd, program)?;
    let read = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().ok().flatten() {
            break Some(s);
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(ProcessError::Command {
            command: text,
            status: s.to_string(),
            output: format!("{}{}", err.trim(), out.trim()),
        }),
        None => Err(ProcessError::Command {
            command: text,
            status: format!("timed out after {timeout:?}"),
            output: err.trim().to_string(),
        }),
    }
}

/// Resident memory (`VmRSS`) in bytes from the text of `/proc/PID/status`.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => Some(n * 1024),
        _ => None,
    }
}

/// Resident memory of process `pid` in bytes (`VmRSS` of
/// `/proc/PID/status`; DPDK's hugepage memory is not included).
///
/// # Errors
/// A sentence naming the file when it cannot be read or has no `VmRSS`.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_vmrss(&text).ok_or_else(|| format!("{path} has no VmRSS line"))
}

/// The CPU time (ns on a CPU, from `/proc/PID/task/TID/schedstat`) of
/// process `pid`'s threads whose name starts with `prefix`, summed.
///
/// # Errors
/// A sentence when the process's threads cannot be listed or none has the
/// name.
pub fn threads_cpu_ns(pid: u32, prefix: &str) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("cannot list {dir}: {e}"))?;
    let mut total = None;
    for t in tasks.flatten() {
        let path = t.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = ns {
            total = Some(total.unwrap_or(0) + ns);
        }
    }
    total.ok_or_else(|| format!("no thread of {pid} named {prefix}* with a schedstat"))
}

/// The runtime directory DPDK leaves for a `--file-prefix`
/// (`/var/run/dpdk/PREFIX`), removed on drop. Declare it after the
/// [`Daemon`] that uses the prefix, so that it is dropped once that daemon
/// has stopped. Only prefixes the runner made up are ever given to it.
#[derive(Debug)]
pub struct DpdkRuntimeDir {
    path: std::path::PathBuf,
}

impl DpdkRuntimeDir {
    /// Guards the runtime directory of `prefix` (which must not be empty
    /// or contain a `/`).
    pub fn new(prefix: &str) -> Option<Self> {
        (!prefix.is_empty() && !prefix.contains('/') && prefix != "." && prefix != "..").then(
            || Self {
                path: std::path::Path::new("/var/run/dpdk").join(prefix),
            },
        )
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for DpdkRuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Starts `cmd` with stdin closed and stdout and stderr piped.
fn spawn_piped(cmd: &mut Command, program: String) -> Result<Child, ProcessError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProcessError::Spawn { program, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU time of this process's threads of one name: a thread that
    /// did some work has some, a name no thread has is an error.
    #[test]
    fn threads_cpu_ns_sums_the_named_threads() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("cpuprobe".into())
            .spawn(move || {
                let mut x = 0u64;
                for i in 0..20_000_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                done_tx.send(x).expect("send");
                let _ = release_rx.recv();
            })
            .expect("spawn");
        done_rx.recv().expect("worked");
        let ns = threads_cpu_ns(std::process::id(), "cpuprobe").expect("the thread");
        assert!(ns > 0);
        assert!(threads_cpu_ns(std::process::id(), "no-such-thread").is_err());
        release_tx.send(()).expect("release");
        t.join().expect("join");
    }

    /// Spawns `sh -c script` and waits (5 s at most) for a line `ready`.
    fn sh_until_ready(script: &str) -> (Daemon, Result<Line, ProcessError>) {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        let mut d = Daemon::spawn("sh", c).unwrap();
        let l = d.wait_line("ready", Duration::from_secs(5), |l| l == "ready");
        (d, l)
    }

    #[test]
    fn wait_line_and_stop() {
        let (mut d, l) = sh_until_ready("echo hello; echo ready; exec sleep 30");
        let l = l.unwrap();
        assert_eq!(l.text, "ready");
        let s = d.stop().unwrap();
        assert!(!s.success());
    }

    #[test]
    fn early_exit_and_timeout_are_errors() {
        let e = sh_until_ready("echo boom >&2; exit 3").1.unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        let mut c = Command::new("sleep");
        c.arg("30");
        let mut d = Daemon::spawn("sleep", c).unwrap();
        let e = d
            .wait_line("ready", Duration::from_millis(300), |_| true)
            .unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }));
        assert!(matches!(
            Daemon::spawn("x", Command::new("/nonexistent/prog")),
            Err(ProcessError::Spawn { .. })
        ));
    }

    #[test]
    fn run_reports_failures() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 1"]);
        let e = run(c, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("err"), "{e}");
        let mut c = Command::new("echo");
        c.arg("ok");
        assert_eq!(run(c, Duration::from_secs(5)).unwrap(), "ok\n");
        let mut c = Command::new("sleep");
        c.arg("10");
        assert!(run(c, Duration::from_millis(200)).is_err());
    }

    #[test]
    fn vmrss_is_parsed_in_bytes() {
        let status = "Name:\tsluiced\nVmPeak:\t  900 kB\nVmRSS:\t   123456 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vmrss(status), Some(123_456 * 1024));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert_eq!(parse_vmrss("VmRSS: lots kB\n"), None);
        let own = rss_bytes(std::process::id()).unwrap();
        assert!(own > 0);
        assert!(rss_bytes(u32::MAX).is_err());
    }

    #[test]
    fn dpdk_runtime_dir_only_for_plain_prefixes() {
        assert!(DpdkRuntimeDir::new("").is_none());
        assert!(DpdkRuntimeDir::new("a/b").is_none());
        assert!(DpdkRuntimeDir::new("..").is_none());
        let d = DpdkRuntimeDir::new("sluice-bench-unit-test-none").unwrap();
        assert_eq!(
            d.path(),
            std::path::Path::new("/var/run/dpdk/sluice-bench-unit-test-none")
        );
    }
}
