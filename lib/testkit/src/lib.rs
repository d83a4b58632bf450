//! What Sluice's end-to-end tests share (a dev-dependency of sluice-datapath,
//! sluice-control, nestdb and sluice-jsonrpc; a dependency of sluice-fuzz): skip recording ([`report_skip!`]), root and
//! tool detection, shell commands, binaries built beside the test, daemon
//! processes stopped on drop ([`Daemon`]), network namespaces and veth pairs that
//! remove themselves on drop ([`Netns`], [`Veth`]), bounded waits that fail
//! with a message ([`wait_until`]), the processes of a node stack
//! (nestdb-server, sluiced: [`node`]), the helpers of the hostile-client
//! tests ([`hostile`]), the power-loss model of the durability tests
//! ([`powerloss`]) and, with feature `node-rows`, rows of the node
//! schema (`rows`).
//!
//! Invariants: nothing here sleeps to synchronise, every wait has a bound
//! and panics naming what it waited for, and every namespace or device it
//! creates is deleted when its guard drops, every process it starts is
//! stopped and reaped. Thread-safety: plain functions
//! and owned guards; two tests must use different namespace and device
//! names.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub mod hostile;
pub mod node;
pub mod powerloss;
pub mod prometheus;
#[cfg(feature = "node-rows")]
pub mod rows;

/// Prints a skip (or note) line and appends it to `target/tmp/skips.txt`,
/// which `scripts/test.sh` prints at the end: cargo hides the output of
/// passing tests, and a skip must never be silent. Takes `format!`
/// arguments; expands `env!("CARGO_TARGET_TMPDIR")` in the calling test.
#[macro_export]
macro_rules! report_skip {
    ($($arg:tt)*) => {
        $crate::record_skip(env!("CARGO_TARGET_TMPDIR"), &format!($($arg)*))
    };
}

/// What [`report_skip!`] does, with the target's tmp directory given.
pub fn record_skip(target_tmpdir: &str, line: &str) {
    println!("{line}");
    let path = Path::new(target_tmpdir).join("skips.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// True when this process runs as root (uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// [`is_root`], or false with the skip line `SKIPPED <test file>: <why>`.
/// Expands `file!()` and `env!("CARGO_TARGET_TMPDIR")` in the calling
/// test: `if !root_or_skip!("needs root (namespaces, DPDK)") { return; }`
#[macro_export]
macro_rules! root_or_skip {
    ($why:expr) => {
        $crate::root_or_skip(env!("CARGO_TARGET_TMPDIR"), file!(), $why)
    };
}

/// What [`root_or_skip!`] does, with the target's tmp directory and the
/// test's file given.
pub fn root_or_skip(target_tmpdir: &str, test: &str, why: &str) -> bool {
    let root = is_root();
    if !root {
        record_skip(target_tmpdir, &format!("SKIPPED {test}: {why}"));
    }
    root
}

/// True when `tool` is on PATH.
pub fn have_tool(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command and returns its output; panics if it cannot be started.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command, panicking with its stderr when it fails; returns stdout.
pub fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failure (cleanup).
pub fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked
/// it for a listener that is closed again).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `f` until it returns `Some`, failing the test with `what` after
/// `limit`. Between polls it yields for 10 ms: the bound, not the pause,
/// is what the test relies on.
pub fn wait_until<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_until_logged(what, limit, String::new, f)
}

/// [`wait_until`], failing with `logs()` (what the processes under test
/// wrote) after the message.
pub fn wait_until_logged<T>(
    what: &str,
    limit: Duration,
    logs: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= limit {
            let logs = logs();
            if logs.is_empty() {
                panic!("timed out after {limit:?} waiting for {what}");
            }
            panic!("timed out after {limit:?} waiting for {what}; logs:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A binary cargo built beside the running test (`target/<profile>/NAME`,
/// the test being `target/<profile>/deps/TEST-HASH`), if it is there.
pub fn built_binary(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.parent()?.join(name);
    p.is_file().then_some(p)
}

/// [`built_binary`], or `None` with a skip line naming the test and the
/// command that builds it. Expands `file!()` and
/// `env!("CARGO_TARGET_TMPDIR")` in the calling test:
/// `let Some(bin) = built_or_skip!("sluiced", "cargo build -p sluice-datapath --bin sluiced") else { return };`
/// With several names, `built_or_skip!(["nestdb-server", "sluiced"], how)`
/// gives all their paths or `None` with a skip line for the first one
/// missing.
#[macro_export]
macro_rules! built_or_skip {
    ([$($name:expr),+ $(,)?], $how:expr) => {
        (|| Some([$($crate::built_binary_or_skip(
            env!("CARGO_TARGET_TMPDIR"), file!(), $name, $how
        )?),+]))()
    };
    ($name:expr, $how:expr) => {
        $crate::built_binary_or_skip(env!("CARGO_TARGET_TMPDIR"), file!(), $name, $how)
    };
}

/// What [`built_or_skip!`] does, with the target's tmp directory and the
/// test's file given.
pub fn built_binary_or_skip(
    target_tmpdir: &str,
    test: &str,
    name: &str,
    how: &str,
) -> Option<PathBuf> {
    let p = built_binary(name);
    if p.is_none() {
        record_skip(
            target_tmpdir,
            &format!("SKIPPED {test}: {name} is not built ({how})"),
        );
    }
    p
}

/// The last CPU this process may run on (a PMD core for a test sluiced).
pub fn last_allowed_cpu() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0")
        .trim()
        .split(',')
        .filter_map(|p| p.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

/// Waits (at most `limit`) until the server `child` accepts connections on
/// the Unix socket `sock`; fails the test with the server's `log` if it
/// exits first.
pub fn wait_for_listener(child: &mut Child, what: &str, sock: &Path, log: &Path, limit: Duration) {
    wait_until(
        &format!("{what} to listen on {}", sock.display()),
        limit,
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "{what} exited with {st}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            UnixStream::connect(sock).ok().map(|_| ())
        },
    );
}

/// The lines a child writes to `out` (its stdout, taken from the
/// `Child`), sent by a thread as they come; the channel closes when the
/// child closes it. Once the receiver is dropped the thread goes on
/// reading and discarding until then, so the child never writes into a
/// closed pipe (a Rust daemon's `println!` panics on EPIPE).
pub fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// `text` without its ANSI colour sequences (a daemon's human log format
/// may colour field names), for matching log lines.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // Up to the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The files `names` of `dir` (the logs of the processes under test), each
/// headed by `--- NAME`, for a failure message; a missing file is empty.
pub fn logs_of(dir: &Path, names: &[&str]) -> String {
    let mut s = String::new();
    for f in names {
        s += &format!(
            "--- {f}\n{}\n",
            std::fs::read_to_string(dir.join(f)).unwrap_or_default()
        );
    }
    s
}

/// A daemon child process whose stderr goes to a log file: on drop it gets
/// SIGTERM and 20 s to exit (it may restore what it changed), then SIGKILL.
pub struct Daemon {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (stdin closed, stderr to `log`, which it empties);
    /// stdout is left as `cmd` set it.
    pub fn spawn(cmd: Command, what: &str, log: &Path) -> Daemon {
        let err =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        Self::spawn_to(cmd, what, log, err)
    }

    /// [`Daemon::spawn`], appending to `log`: a daemon restarted by the
    /// test keeps what its earlier runs wrote.
    pub fn spawn_appending(cmd: Command, what: &str, log: &Path) -> Daemon {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        Self::spawn_to(cmd, what, log, err)
    }

    fn spawn_to(mut cmd: Command, what: &str, log: &Path, err: std::fs::File) -> Daemon {
        let child = cmd
            .stdin(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Daemon {
            child,
            what: what.to_string(),
            log: log.to_path_buf(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process (for its pipes and its exit status).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// What the daemon wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test with the log if the process has exited.
    pub fn alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited with {st}:\n{}", self.what, self.log());
        }
    }

    /// SIGKILLs the process and reaps it (a crash, for the tests of what
    /// survives one).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERMs the process and waits (at most `limit`) for its exit,
    /// failing the test with the log if it does not exit in time.
    pub fn stop(mut self, limit: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.terminate();
        wait_until(
            &format!("{} to exit after SIGTERM", self.what),
            limit,
            || self.child.try_wait().ok().flatten(),
        );
    }

    fn terminate(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; callers check that it
            // is not reaped yet (`try_wait` gave no status), so the pid
            // cannot name another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // exited (or killed) and reaped already
        }
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace with its loopback up, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// Creates namespace `name` (removing a stale one of that name first).
    pub fn new(name: &str) -> Netns {
        sh_quiet(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name]);
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        Netns(name.to_string())
    }

    /// Runs `ip -n NAME ARGS…` (an iproute2 command on the namespace),
    /// panicking with its stderr when it fails; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.0];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Pings `dst` from the namespace until three echoes came back, within
    /// 60 s, and asserts that they did. (`-w`, not `-W`: with `-W`, ping
    /// waits after its last probe only twice the largest round trip so far,
    /// so a loaded machine's one slow reply failed the check; a probe lost
    /// on the way is sent again, so this checks reachability, not loss.)
    pub fn assert_ping(&self, dst: &str) {
        let out = self.exec(&["ping", "-n", "-c", "3", "-i", "0.2", "-w", "60", dst]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(" 3 received"),
            "ping {dst} from {} failed:\n{text}{}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pings `dst` twice from the namespace and asserts that no echo came
    /// back (each waits at most 1 s).
    pub fn assert_no_ping(&self, dst: &str) {
        let out = self.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", dst]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains(" 0 received"),
            "ping {dst} from {} should fail: {text}",
            self.0
        );
    }

    /// The MAC address of `iface` in the namespace, as the kernel writes
    /// it (`02:00:…`).
    pub fn mac_of(&self, iface: &str) -> String {
        let out = self.exec(&["cat", &format!("/sys/class/net/{iface}/address")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh_quiet(&["ip", "netns", "del", &self.0]);
    }
}

/// A veth pair: `outer` stays in the root namespace (or goes into `node`,
/// see [`Veth::new_in`]), `inner` goes into `ns` with `addr` (CIDR),
/// checksum offload off so that frames copied by af_packet carry complete
/// checksums. Deleted on drop.
pub struct Veth {
    /// The end the datapath (or the test) uses.
    pub outer: String,
    node: Option<String>,
}

impl Veth {
    /// A pair with its outer end in the root namespace.
    pub fn new(outer: &str, inner: &str, ns: &Netns, addr: &str) -> Veth {
        Self::create(None, outer, inner, ns, addr)
    }

    /// Like [`Veth::new`] with the outer end in the `node` namespace, where
    /// sluiced runs. DPDK's af_packet PMD joins a PACKET_FANOUT group whose
    /// id is `pid ^ ifindex`: two sluiced processes in one namespace can
    /// collide on it (EINVAL/EPERM at start), while fanout groups never
    /// match across namespaces.
    pub fn new_in(node: &Netns, outer: &str, inner: &str, ns: &Netns, addr: &str) -> Veth {
        Self::create(Some(node), outer, inner, ns, addr)
    }

    fn create(node: Option<&Netns>, outer: &str, inner: &str, ns: &Netns, addr: &str) -> Veth {
        sh_quiet(&["ip", "link", "del", outer]);
        sh(&[
            "ip", "link", "add", outer, "type", "veth", "peer", "name", inner,
        ]);
        let v = Veth {
            outer: outer.to_string(),
            node: node.map(|n| n.0.clone()),
        };
        sh(&["ip", "link", "set", inner, "netns", &ns.0]);
        match node {
            Some(n) => {
                sh(&["ip", "link", "set", outer, "netns", &n.0]);
                n.ip(&["link", "set", outer, "up"]);
            }
            None => {
                sh(&["ip", "link", "set", outer, "up"]);
            }
        }
        ns.ip(&["addr", "add", addr, "dev", inner]);
        ns.ip(&["link", "set", inner, "up"]);
        sh_quiet(&[
            "ip", "netns", "exec", &ns.0, "ethtool", "-K", inner, "tx", "off",
        ]);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        match &self.node {
            Some(n) => sh_quiet(&["ip", "-n", n, "link", "del", &self.outer]),
            None => sh_quiet(&["ip", "link", "del", &self.outer]),
        }
    }
}

/// A node namespace (where sluiced runs) and two pod namespaces `a` and
/// `b`, each joined to the node by a veth pair: `{veths}a-o` in the node
/// and `{veths}a-i` in pod `a` with address `{net}.1/24`, likewise `b` with
/// `{net}.2/24`. Everything is removed on drop (veths first).
pub struct TwoPods {
    _va: Veth,
    _vb: Veth,
    /// Pod `a`.
    pub a: Netns,
    /// Pod `b`.
    pub b: Netns,
    /// The node.
    pub node: Netns,
}

impl TwoPods {
    /// Namespaces `{tag}-node`, `{tag}-a`, `{tag}-b`; veth names from
    /// `veths` (at most 11 characters: interface names have 15); `net` is
    /// the first three octets of the pods' /24.
    pub fn new(tag: &str, veths: &str, net: &str) -> TwoPods {
        let node = Netns::new(&format!("{tag}-node"));
        let a = Netns::new(&format!("{tag}-a"));
        let b = Netns::new(&format!("{tag}-b"));
        let pair = |pod: &Netns, side: &str, host: u8| {
            let (outer, inner) = (format!("{veths}{side}-o"), format!("{veths}{side}-i"));
            Veth::new_in(&node, &outer, &inner, pod, &format!("{net}.{host}/24"))
        };
        TwoPods {
            _va: pair(&a, "a", 1),
            _vb: pair(&b, "b", 2),
            a,
            b,
            node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_ansi_removes_colour_sequences_only() {
        assert_eq!(
            strip_ansi("\u{1b}[3mgeneration\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 ok"),
            "generation=7 ok"
        );
        assert_eq!(strip_ansi("plain [text]"), "plain [text]");
    }

    #[test]
    fn skips_are_appended_to_skips_txt() {
        let dir = std::env::temp_dir().join(format!("sluice-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.to_str().unwrap();
        record_skip(tmp, "SKIP one: why");
        record_skip(tmp, "SKIP two: why");
        let text = std::fs::read_to_string(dir.join("skips.txt")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "SKIP one: why\nSKIP two: why\n");
    }

    #[test]
    fn wait_until_returns_the_first_value() {
        let mut n = 0;
        let got = wait_until("n to reach 3", Duration::from_secs(60), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for something that never happens")]
    fn wait_until_fails_naming_what_it_waited_for() {
        wait_until::<()>(
            "something that never happens",
            Duration::from_millis(1),
            || None,
        );
    }

    #[test]
    fn sh_returns_stdout_and_have_tool_finds_sh() {
        assert_eq!(sh(&["echo", "hi"]), "hi\n");
        assert!(have_tool("sh"));
        assert!(!have_tool("no-such-tool-sluice"));
    }
}
