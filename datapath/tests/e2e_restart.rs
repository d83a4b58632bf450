//! End to end: connections survive a sluiced crash (`[datapath]
//! state_file`). A client namespace holds one long-lived kernel TCP
//! connection to a ClusterIP (DNATed by conntrack to one of two endpoint
//! namespaces that echo each line with their name). sluiced is SIGKILLed
//! and a new one starts with the same configuration; until the flows and
//! the Service are pushed again (as the agent does for a new instance) it
//! forwards nothing, not even as the learning switch a new sluiced is
//! otherwise (its default flow would send the endpoint's retransmissions
//! out untranslated, and the client's resets would end the restored
//! connections); then the same connection carries on: same endpoint, no
//! reset. Then the saved
//! file is corrupted and sluiced killed again: the new one says it
//! discarded the file, and the connection — its NAT gone — no longer gets
//! through (this is what the saved state buys).
//!
//! `sigkill_at_a_power_cut_restores_exactly_the_synced_state`: the same
//! set-up with sluiced under the power-loss model (`sluice_testkit::
//! powerloss`): it SIGKILLs itself at a seeded random fsync/fdatasync of
//! its state file while new connections are opened, the state directory
//! is rebuilt as a power cut would leave it (only what was synced, plus
//! random parts of unsynced tails), and the next sluiced must restore
//! exactly what the rebuilt files hold (its log line says how many), and
//! every connection in them carries on through the same endpoint.
//! `POWERCUT_SLUICED_ROUNDS` sets the number of cuts (default 3).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::*;

const PREFIX: &str = "slt-rs";

/// An echo server (python3) in a namespace, killed on drop.
struct Echo(Child);

impl Echo {
    fn start(ns: &Netns, name: &str) -> Echo {
        let script = format!(
            "import socket,threading\n\
             s=socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',8080))\n\
             s.listen(8)\n\
             print('listening',flush=True)\n\
             def serve(c):\n\
             \x20   f=c.makefile('rw')\n\
             \x20   for line in f:\n\
             \x20       f.write('{name} '+line); f.flush()\n\
             while True:\n\
             \x20   c,a=s.accept()\n\
             \x20   threading.Thread(target=serve,args=(c,),daemon=True).start()\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 echo server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("server output");
        assert_eq!(line.trim(), "listening");
        Echo(child)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One kernel TCP connection to the ClusterIP, driven line by line: each
/// line sent comes back prefixed with the endpoint's name, or "ERROR ..."
/// when the connection broke or stalled (10 s).
struct Conn {
    /// The client's port (0: the connection could not be made).
    port: u16,
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Conn {
    fn open(client: &Netns) -> Conn {
        let script = "import socket,sys\n\
             try:\n\
             \x20   s=socket.create_connection(('10.96.0.10',80),timeout=10)\n\
             except Exception as e:\n\
             \x20   print(0,flush=True); sys.exit(0)\n\
             print(s.getsockname()[1],flush=True)\n\
             f=s.makefile('rw')\n\
             for line in sys.stdin:\n\
             \x20   try:\n\
             \x20       f.write(line); f.flush(); r=f.readline()\n\
             \x20       print(r.strip() if r else 'ERROR closed',flush=True)\n\
             \x20   except Exception as e:\n\
             \x20       print('ERROR',e,flush=True)\n";
        let mut child = Command::new("ip")
            .args(["netns", "exec", &client.0, "python3", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 client");
        let to = child.stdin.take().expect("stdin");
        let mut from = BufReader::new(child.stdout.take().expect("stdout"));
        let mut port = String::new();
        from.read_line(&mut port).expect("the client's port");
        let port = port
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the client's port, got {port:?}"));
        Conn {
            port,
            child,
            to,
            from,
        }
    }

    fn say(&mut self, line: &str) -> String {
        writeln!(self.to, "{line}").expect("to the client");
        let mut r = String::new();
        self.from.read_line(&mut r).expect("from the client");
        r.trim().to_string()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(args: &[&str]) -> String {
    let (ok, out, err) = sluicectl(PREFIX, args);
    assert!(ok, "sluicectl {args:?} failed: {out}{err}");
    out
}

/// What the agent pushes to a new instance: the rules and the Service.
fn program() {
    for f in FLOWS {
        ctl(&["add-flow", f]);
    }
    ctl(&["call", "service-update", SERVICE]);
}

const FLOWS: [&str; 6] = [
    "table=0,priority=100,arp actions=normal",
    "table=0,priority=10,ip actions=ct(commit,zone=1,nat,table=1)",
    "table=1,priority=20,ct_state=+trk+inv actions=drop",
    "table=1,priority=10,ip,nw_dst=10.205.0.1 actions=mod_dl_dst:02:00:00:02:05:01,output:1",
    "table=1,priority=10,ip,nw_dst=10.205.0.5 actions=mod_dl_dst:02:00:00:02:05:05,output:2",
    "table=1,priority=10,ip,nw_dst=10.205.0.6 actions=mod_dl_dst:02:00:00:02:05:06,output:3",
];

const SERVICE: &str = r#"{"upsert": [{"name": "default/web:http", "protocol": "tcp", "port": 80,
    "cluster_ips": ["10.96.0.10"],
    "endpoints": [{"ip": "10.205.0.5", "port": 8080}, {"ip": "10.205.0.6", "port": 8080}]}]}"#;

/// Waits (bounded) until the state file and its journal hold at least
/// one connection.
fn wait_saved(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let n = sluice_datapath::daemon::state::load(path)
            .ok()
            .flatten()
            .map_or(0, |l| l.state.conns.len());
        if n > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the state file {} never held the connection",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The tests of this file use the same namespaces, DPDK prefix and
/// control socket: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn connections_survive_a_sluiced_crash_with_their_nat() {
    let _one = one_at_a_time();
    if !can_use_netns("connections_survive_a_sluiced_crash_with_their_nat") {
        return;
    }
    let net = ServiceNet::new("slt-rs", "10.205.0", "02:00:00:02:05");
    let (node, c, a, b) = (&net.node, &net.c, &net.a, &net.b);
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("conntrack.state");
    let cfg = config(
        PREFIX,
        &format!(
            "state_file = {}\nstate_interval_ms = 50\n\
             [port:c]\ndevargs = net_af_packet0,iface=slt-rs-co\nofport = 1\n\
             [port:a]\ndevargs = net_af_packet1,iface=slt-rs-ao\nofport = 2\n\
             [port:b]\ndevargs = net_af_packet2,iface=slt-rs-bo\nofport = 3\n",
            state.display()
        ),
    );
    let _ea = Echo::start(a, "a");
    let _eb = Echo::start(b, "b");

    let (d, _) = Sluiced::start_in(node, &cfg);
    // Nothing saved yet: a new sluiced is a learning switch until
    // programmed.
    assert!(
        ctl(&["dump-flows"]).contains("priority=0 actions=NORMAL"),
        "the default flow"
    );
    program();
    let mut conn = Conn::open(c);
    let first = conn.say("one");
    let (server, _) = first
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected reply {first:?}"));
    assert!(server == "a" || server == "b", "{first}");
    wait_saved(&state);

    // Crash, restart, re-push: the connection carries on. Until the
    // program is pushed again, the new sluiced forwards nothing (a
    // learning switch would send the endpoint's replies out untranslated
    // and the client's resets would end the restored connections).
    drop(d);
    let (d, _) = Sluiced::start_in(node, &cfg);
    let flows = ctl(&["dump-flows"]);
    assert!(
        flows.trim().is_empty(),
        "no flow until programmed after a restore: {flows}"
    );
    program();
    let ct = ctl(&["call", "dump-conntrack", "zone=1"]);
    assert!(ct.contains("dst=10.96.0.10"), "restored: {ct}");
    assert_eq!(
        conn.say("two"),
        format!("{server} two"),
        "same endpoint, same connection"
    );
    assert_eq!(conn.say("three"), format!("{server} three"));
    println!("the connection to {server} survived a SIGKILL of sluiced");

    // Corrupt the saved state and crash again: the new sluiced discards it
    // and the connection's NAT is gone.
    wait_saved(&state);
    drop(d);
    let mut data = std::fs::read(&state).expect("state file");
    let n = data.len();
    data[n / 2] ^= 0xff;
    std::fs::write(&state, &data).expect("corrupt it");
    let (_d, _) = Sluiced::start_in(node, &cfg);
    program();
    let bad = state_dir.path().join("conntrack.state.bad");
    assert!(bad.exists(), "the corrupt file is moved aside");
    assert!(
        state_dir
            .path()
            .join("conntrack.state.journal.bad")
            .exists(),
        "its journal (the incremental saves) is moved aside with it"
    );
    let after = conn.say("four");
    assert!(
        after.starts_with("ERROR"),
        "without the saved state the connection cannot carry on, got {after:?}"
    );
}

/// The pid of the sluiced started with the configuration in `dir`.
fn pid_of(dir: &std::path::Path) -> u32 {
    let needle = dir.join("sluiced.ini").display().to_string();
    let found = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with(sluiced_bin().to_str().unwrap_or("?")) && c.contains(&needle)
            })
        });
    found.unwrap_or_else(|| panic!("no sluiced process with {needle}"))
}

/// True while `pid` runs (not exited, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|st| st != 'Z' && st != 'X')
}

#[test]
fn sigkill_at_a_power_cut_restores_exactly_the_synced_state() {
    use rand::{Rng, SeedableRng};
    use sluice_testkit::powerloss::{self, CutOptions};
    let _one = one_at_a_time();
    if !can_use_netns("sigkill_at_a_power_cut_restores_exactly_the_synced_state") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let shim = match powerloss::build_shim(work.path()) {
        Ok(s) => s,
        Err(why) => {
            report_skip(&format!("SKIPPED e2e_restart power cut: {why}"));
            return;
        }
    };
    let rounds: usize = std::env::var("POWERCUT_SLUICED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5107_0017);
    let net = ServiceNet::new("slt-rs", "10.205.0", "02:00:00:02:05");
    let (node, c, a, b) = (&net.node, &net.c, &net.a, &net.b);
    let root = work.path().canonicalize().expect("canonical");
    let state_dir = root.join("state");
    std::fs::create_dir(&state_dir).expect("state dir");
    let state = state_dir.join("conntrack.state");
    let cfg = config(
        PREFIX,
        &format!(
            "state_file = {}\nstate_interval_ms = 50\n\
             [port:c]\ndevargs = net_af_packet0,iface=slt-rs-co\nofport = 1\n\
             [port:a]\ndevargs = net_af_packet1,iface=slt-rs-ao\nofport = 2\n\
             [port:b]\ndevargs = net_af_packet2,iface=slt-rs-bo\nofport = 3\n",
            state.display()
        ),
    );
    let _ea = Echo::start(a, "a");
    let _eb = Echo::start(b, "b");
    // Connections open across the rounds: (connection, its endpoint).
    let mut conns: Vec<(Conn, String)> = Vec::new();
    // Connections left behind (not in the synced state): kept open, so
    // that no FIN changes their tracked state (and lifetime) meanwhile.
    let mut graveyard: Vec<Conn> = Vec::new();
    let (mut restored_total, mut carried_on, mut opened, mut kept_tails) = (0, 0, 0, 0);
    for round in 0..rounds {
        let records = root.join(format!("records-{round}"));
        std::fs::create_dir(&records).expect("records");
        // The first saves of a start: the resume (or the first compaction:
        // 4 syncs), then one fdatasync per save with a new connection.
        let kill_at: u64 = rng.gen_range(1..8);
        for (k, v) in [
            ("LD_PRELOAD", shim.display().to_string()),
            ("POWERLOSS_DIR", state_dir.display().to_string()),
            ("POWERLOSS_STATE", records.display().to_string()),
            ("POWERLOSS_KILL_AT", kill_at.to_string()),
        ] {
            std::env::set_var(k, v);
        }
        let (d, _) = Sluiced::start_in(node, &cfg);
        for k in [
            "LD_PRELOAD",
            "POWERLOSS_DIR",
            "POWERLOSS_STATE",
            "POWERLOSS_KILL_AT",
        ] {
            std::env::remove_var(k);
        }
        let pid = pid_of(d.dir.path());
        // New connections (each a change the saver syncs) until sluiced
        // kills itself at its cut; a connection made before the cut may or
        // may not have been synced.
        let deadline = std::time::Instant::now() + WAIT;
        // The cut may come while the program is pushed (the first
        // compaction syncs four times): failures then are expected.
        for f in FLOWS {
            let _ = sluicectl(PREFIX, &["add-flow", f]);
        }
        let _ = sluicectl(PREFIX, &["call", "service-update", SERVICE]);
        while alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: sluiced never reached its {kill_at}th sync"
            );
            let mut conn = Conn::open(c);
            if conn.port == 0 {
                graveyard.push(conn);
                continue;
            }
            let r = conn.say("hello");
            if let Some(server) = r.strip_suffix(" hello") {
                opened += 1;
                conns.push((conn, server.to_string()));
            } else {
                graveyard.push(conn);
            }
        }
        let stderr =
            std::fs::read_to_string(d.dir.path().join("sluiced.stderr")).unwrap_or_default();
        assert!(!stderr.contains("panicked"), "round {round}: {stderr}");
        drop(d);
        let cut = powerloss::power_cut(
            &state_dir,
            &records,
            &mut rng,
            CutOptions {
                zero_tails: true,
                dir_ops_may_land: true,
            },
        );
        kept_tails += usize::from(cut.unsynced_kept > 0);
        std::fs::remove_dir_all(&records).expect("remove records");
        // What the files hold after the cut: what the next start must
        // restore (a cut alone never makes them unreadable).
        let expect = sluice_datapath::daemon::state::load(&state).unwrap_or_else(|e| {
            panic!("round {round}: the files after a power cut do not load: {e}")
        });
        let saved_ports: std::collections::HashSet<u16> = expect
            .as_ref()
            .map(|l| {
                l.state
                    .conns
                    .iter()
                    .filter(|c| c.keys[0].proto == 6)
                    .map(|c| c.keys[0].tuple.sport)
                    .collect()
            })
            .unwrap_or_default();
        let (d, _) = Sluiced::start_in(node, &cfg);
        program();
        // The restore's line comes at its end, from its background
        // thread (the PMDs forward meanwhile): wait for it (bounded).
        let read =
            || std::fs::read_to_string(d.dir.path().join("sluiced.stderr")).unwrap_or_default();
        let is_restore = |l: &str| l.contains("restored ") && l.contains(" connections (");
        let mut log = read();
        if expect.is_some() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !log.lines().any(is_restore) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                log = read();
            }
        }
        let lines: Vec<&str> = log.lines().filter(|l| is_restore(l)).collect();
        match &expect {
            Some(l) => {
                assert_eq!(lines.len(), 1, "round {round}: one restore line: {log}");
                let n: usize = lines[0]
                    .split("restored ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("round {round}: a count in {:?}", lines[0]));
                // Exactly the files' connections, less any that expired
                // between this test's read and sluiced's (a connection
                // attempt cut short, seconds left).
                let sure = l
                    .state
                    .conns
                    .iter()
                    .filter(|c| c.remaining > 10_000_000_000)
                    .count();
                assert!(
                    (sure..=l.state.conns.len()).contains(&n) && lines[0].contains("(0 skipped;"),
                    "round {round}: the files hold {} connections ({sure} with more than 10 s left): {}",
                    l.state.conns.len(),
                    lines[0]
                );
                restored_total += n;
            }
            None => assert!(
                lines.is_empty(),
                "round {round}: nothing saved, nothing restored: {log}"
            ),
        }
        assert!(!log.contains("discarded"), "round {round}: {log}");
        // Every saved connection carries on through its endpoint; the
        // others (not synced before the cut) are left.
        let mut kept = Vec::new();
        for (mut conn, server) in conns.drain(..) {
            if !saved_ports.contains(&conn.port) {
                graveyard.push(conn);
                continue;
            }
            let r = conn.say("after");
            if r != format!("{server} after") {
                let held = expect.as_ref().and_then(|l| {
                    l.state
                        .conns
                        .iter()
                        .find(|c| c.keys[0].proto == 6 && c.keys[0].tuple.sport == conn.port)
                });
                let (_, now, _) = sluicectl(PREFIX, &["call", "dump-conntrack", "zone=1"]);
                let sport = format!("sport={},", conn.port);
                let now: Vec<&str> = now.lines().filter(|l| l.contains(&sport)).collect();
                panic!(
                    "round {round}: connection from port {} was in the synced state and must carry on, got {r:?}; the files held {held:?}; the table holds {now:?}",
                    conn.port
                );
            }
            carried_on += 1;
            kept.push((conn, server));
        }
        conns = kept;
        // SIGKILL (page cache kept): the next round's start reads the
        // files as they are.
        drop(d);
    }
    drop(graveyard);
    println!(
        "sluiced SIGKILLed at a power cut: {rounds} cuts (at a seeded fsync/fdatasync of the state file), {opened} connections opened, {restored_total} restored in all exactly as the synced files held them, {carried_on} carried on through their endpoint after the restart; {kept_tails} cuts kept part of an unsynced tail"
    );
}
