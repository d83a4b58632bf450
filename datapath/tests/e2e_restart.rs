//! End to end: connections survive a sluiced crash (`[datapath]
//! state_file`). A client namespace holds one long-lived kernel TCP
//! connection to a ClusterIP (DNATed by conntrack to one of two endpoint
//! namespaces that echo each line with their name). sluiced is SIGKILLed
//! and a new one starts with the same configuration; the flows and the
//! Service are pushed again (as the agent does for a new instance); the
//! same connection carries on: same endpoint, no reset. Then the saved
//! file is corrupted and sluiced killed again: the new one says it
//! discarded the file, and the connection — its NAT gone — no longer gets
//! through (this is what the saved state buys).

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
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Conn {
    fn open(client: &Netns) -> Conn {
        let script = "import socket,sys\n\
             s=socket.create_connection(('10.96.0.10',80),timeout=10)\n\
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
        let from = BufReader::new(child.stdout.take().expect("stdout"));
        Conn { child, to, from }
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
    for f in [
        "table=0,priority=100,arp actions=normal",
        "table=0,priority=10,ip actions=ct(commit,zone=1,nat,table=1)",
        "table=1,priority=20,ct_state=+trk+inv actions=drop",
        "table=1,priority=10,ip,nw_dst=10.205.0.1 actions=mod_dl_dst:02:00:00:02:05:01,output:1",
        "table=1,priority=10,ip,nw_dst=10.205.0.5 actions=mod_dl_dst:02:00:00:02:05:05,output:2",
        "table=1,priority=10,ip,nw_dst=10.205.0.6 actions=mod_dl_dst:02:00:00:02:05:06,output:3",
    ] {
        ctl(&["add-flow", f]);
    }
    ctl(&[
        "call",
        "service-update",
        r#"{"upsert": [{"name": "default/web:http", "protocol": "tcp", "port": 80,
            "cluster_ips": ["10.96.0.10"],
            "endpoints": [{"ip": "10.205.0.5", "port": 8080}, {"ip": "10.205.0.6", "port": 8080}]}]}"#,
    ]);
}

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

#[test]
fn connections_survive_a_sluiced_crash_with_their_nat() {
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
    program();
    let mut conn = Conn::open(c);
    let first = conn.say("one");
    let (server, _) = first
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected reply {first:?}"));
    assert!(server == "a" || server == "b", "{first}");
    wait_saved(&state);

    // Crash, restart, re-push: the connection carries on.
    drop(d);
    let (d, _) = Sluiced::start_in(node, &cfg);
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
