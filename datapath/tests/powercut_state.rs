//! Power-loss durability of sluiced's crash-state file (`[datapath]
//! state_file`: a snapshot written by compaction plus the fdatasync'd
//! journal `FILE.journal`, see `daemon::state`), under the power-loss model
//! nestdb's test uses (`sluice_testkit::powerloss`: file contents durable
//! only as of fsync/fdatasync, directory entries only as of the
//! directory's fsync).
//!
//! The campaign drives the saver in process (the test binary reruns
//! itself with the shim preloaded): a table of connections is created,
//! changed (mark, label, NAT bits, Service endpoint, reply seen, protocol)
//! and deleted at random between the saver's rounds, the journal is
//! compacted often (so cuts land in compactions, around their renames),
//! and the power is cut at a seeded random sync: from then on every sync
//! fails and records nothing, so the saver stops where a real cut would
//! stop it. The directory is rebuilt as the cut would leave it (unsynced
//! tails kept in part, whole or not at all, sometimes as zeros; the
//! unsynced directory operations kept or not), one cut in twenty also
//! flips a random byte of a random file (media corruption), and the next
//! start restores from it, exactly as sluiced does at start
//! (`state::begin_restore`, waited for), then its saver resumes. After each cut:
//! - the restored table is exactly the state of the last completed save,
//!   or of the save under way at the cut (when all of it reached the
//!   disk anyway), or the files were discarded (moved aside) with one log
//!   line; a completed save lost counts as "lost acknowledged" and fails
//!   the test;
//! - after a corrupted cut, the restored table must be a state some save
//!   really wrote, or nothing (discarded): corrupt data is never restored;
//! - a cut without corruption is never discarded (the format tolerates
//!   every cut the model makes);
//! - nothing panics.
//!
//! `POWERCUT_CUTS` sets the number of cuts (default 1,000, about a
//! minute in a debug build); `POWERCUT_SEED` the seed. The figure line
//! starts with "power cuts of the state file:".

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_datapath::conntrack::nat::Tuple;
use sluice_datapath::conntrack::state::{SavedConn, SavedProto, SavedState};
use sluice_datapath::conntrack::{ConnFilter, ConnKey, Conntrack, ConntrackConfig};
use sluice_datapath::daemon::state::{self, Incremental};
use sluice_datapath::time::clock_ns;
use sluice_testkit::powerloss::{self, CutOptions, InProcess};

const SEED: u64 = 0x5107_cafe;
const HOUR: u64 = 3_600_000_000_000;
/// Connection ids (the low 16 bits of the client address).
const IDS: u32 = 60_000;

/// What a restore must reproduce of one connection (the fields the saver
/// promises: its counters and lifetime restore as of an older save).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Rec {
    nat: u8,
    icmp: bool,
    replied: bool,
    mark: u32,
    label: u128,
    lb: Option<(String, Ipv4Addr, u16)>,
}

type Model = BTreeMap<u32, Rec>;

fn client(id: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xac10_0000 | id)
}

fn conn(id: u32, r: &Rec) -> SavedConn {
    let proto = if r.icmp { 1 } else { 17 };
    let t = Tuple {
        src: u32::from(client(id)),
        dst: 0x0a01_0001,
        sport: 1024,
        dport: 53,
    };
    let rev = Tuple {
        src: t.dst,
        dst: t.src,
        sport: t.dport,
        dport: t.sport,
    };
    let key = |tuple| ConnKey {
        zone: 1,
        proto,
        tuple,
    };
    SavedConn {
        keys: [key(t), key(rev)],
        nat: r.nat,
        proto: if r.icmp {
            SavedProto::Icmp
        } else {
            SavedProto::Other
        },
        replied: r.replied,
        remaining: HOUR,
        packets: [1, u64::from(r.replied)],
        bytes: [64, 64 * u64::from(r.replied)],
        mark: r.mark,
        label: r.label,
        lb: r.lb.clone(),
    }
}

fn random_rec(rng: &mut StdRng) -> Rec {
    Rec {
        nat: rng.gen_range(0..4),
        icmp: rng.gen_bool(0.2),
        replied: rng.gen_bool(0.7),
        mark: rng.gen(),
        label: if rng.gen_bool(0.3) { rng.gen() } else { 0 },
        lb: rng.gen_bool(0.4).then(|| {
            (
                format!("default/svc{}:http", rng.gen_range(0..3)),
                Ipv4Addr::new(10, 2, 0, rng.gen_range(1..9)),
                8080,
            )
        }),
    }
}

fn insert(ct: &Conntrack, id: u32, r: &Rec) {
    let s = SavedState {
        conns: vec![conn(id, r)],
        ..Default::default()
    };
    assert_eq!(ct.restore(&s, clock_ns()).restored, 1, "insert {id}");
}

fn remove(ct: &Conntrack, id: u32) {
    let f = ConnFilter {
        ip: Some(client(id)),
        ..Default::default()
    };
    assert_eq!(ct.flush(&f), 1, "delete {id}");
}

/// The table as the saver promises to restore it.
fn model_of(ct: &Conntrack) -> Model {
    state::snapshot(ct, None)
        .conns
        .into_iter()
        .map(|c| {
            let id = c.keys[0].tuple.src & 0xffff;
            (
                id,
                Rec {
                    nat: c.nat,
                    icmp: c.proto == SavedProto::Icmp,
                    replied: c.replied,
                    mark: c.mark,
                    label: c.label,
                    lb: c.lb,
                },
            )
        })
        .collect()
}

fn digest(m: &Model) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.hash(&mut h);
    h.finish()
}

/// Creates, changes and deletes a few connections of `ct` (and `model`).
fn mutate(ct: &Conntrack, model: &mut Model, rng: &mut StdRng, next: &mut u32) {
    for _ in 0..rng.gen_range(1..6) {
        let op = rng.gen_range(0..10);
        let pick = |rng: &mut StdRng, model: &Model| {
            let i = rng.gen_range(0..model.len());
            *model.keys().nth(i).expect("an id")
        };
        if model.len() < 8 || (op < 4 && model.len() < 80) {
            while model.contains_key(&(*next % IDS)) {
                *next += 1;
            }
            let id = *next % IDS;
            *next += 1;
            let r = random_rec(rng);
            insert(ct, id, &r);
            model.insert(id, r);
        } else if op < 7 {
            // A change in a field the restore needs: the entry is
            // replaced (the saver sees the same key with other fields).
            let id = pick(rng, model);
            let mut r = random_rec(rng);
            r.mark = model[&id].mark.wrapping_add(1);
            remove(ct, id);
            insert(ct, id, &r);
            model.insert(id, r);
        } else {
            let id = pick(rng, model);
            remove(ct, id);
            model.remove(&id);
        }
    }
}

/// The log lines of this process (the campaign's child), captured.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn take_log() -> Vec<String> {
    let mut l = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let s = String::from_utf8_lossy(&l).into_owned();
    l.clear();
    s.lines().map(str::to_string).collect()
}

/// A directory for the files: /dev/shm when there is one (the model, not
/// the disk, decides what is durable, and a campaign of thousands of
/// fsyncs need not wear a disk), else the system's.
fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("powercut-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory")
}

/// True when the directory's present entries differ from its durable map
/// (a compaction was between its creation and its directory sync).
fn dir_ops_pending(dir: &Path, records: &Path) -> bool {
    let map = std::fs::read_to_string(records.join("dir.map")).expect("the shim's map");
    let mut durable: Vec<(u64, String)> = map
        .lines()
        .filter_map(|l| {
            let (i, n) = l.split_once(' ')?;
            Some((i.parse().ok()?, n.to_string()))
        })
        .collect();
    durable.sort();
    let mut now: Vec<(u64, String)> = powerloss::files(dir)
        .into_iter()
        .map(|(n, (i, _))| (i, n))
        .collect();
    now.sort();
    durable != now
}

#[derive(Debug, Default)]
struct Figures {
    cuts: usize,
    rounds: usize,
    compactions: usize,
    scans: usize,
    recovered_last: usize,
    recovered_newer: usize,
    discarded: usize,
    corrupted: usize,
    corrupted_discarded: usize,
    corrupted_older: usize,
    lost: usize,
    in_compaction: usize,
    tails: usize,
    zeroed: usize,
    dir_ops_landed: usize,
    restored_conns: usize,
}

fn campaign(shim: InProcess) {
    let cuts: usize = std::env::var("POWERCUT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEED);
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .without_time()
        .try_init();
    let work = workdir();
    let root = work.path().canonicalize().expect("canonical");
    let dir = root.join("state");
    std::fs::create_dir(&dir).expect("state dir");
    let path = dir.join("conntrack.state");
    let mut rng = StdRng::seed_from_u64(seed);
    let new_saver = |rng: &mut StdRng| {
        // Compaction once the journal outgrows the snapshot (or 1-8 KiB):
        // often, so that cuts land in compactions.
        Incremental::new(&path).with_compact_min(rng.gen_range(1..=8) << 10)
    };
    let mut ct = Conntrack::new(ConntrackConfig::default());
    let mut model = Model::new();
    let mut inc = new_saver(&mut rng);
    let mut next = 0u32;
    // Every state a completed (or cut) save wrote: what a corrupted cut
    // may restore.
    let mut written: HashSet<u64> = HashSet::from([digest(&Model::new())]);
    let mut f = Figures::default();
    let mut failures: Vec<String> = Vec::new();
    for cut in 0..cuts {
        let records = root.join(format!("records-{cut}"));
        std::fs::create_dir(&records).expect("records dir");
        shim.configure(&dir, &records);
        shim.arm(Some(rng.gen_range(0..12)));
        // What the files hold now (the previous start restored it).
        let mut acked = model.clone();
        let in_progress;
        let mut rounds = 0;
        loop {
            mutate(&ct, &mut model, &mut rng, &mut next);
            rounds += 1;
            assert!(rounds < 500, "cut {cut}: the power cut never came");
            match inc.round(&ct, None) {
                Ok(r) => {
                    assert!(
                        !shim.is_cut(),
                        "cut {cut}: a round succeeded although a sync failed: {r:?}"
                    );
                    f.rounds += 1;
                    f.compactions += usize::from(r.compacted);
                    f.scans += usize::from(r.scanned && !r.compacted);
                    acked = model.clone();
                    written.insert(digest(&acked));
                }
                Err(e) => {
                    assert!(
                        shim.is_cut(),
                        "cut {cut}: a round failed without a power cut: {e}"
                    );
                    in_progress = model.clone();
                    written.insert(digest(&in_progress));
                    break;
                }
            }
        }
        f.cuts += 1;
        f.in_compaction += usize::from(dir_ops_pending(&dir, &records));
        let c = powerloss::power_cut(
            &dir,
            &records,
            &mut rng,
            CutOptions {
                zero_tails: true,
                dir_ops_may_land: true,
            },
        );
        f.tails += usize::from(c.unsynced_kept > 0);
        f.zeroed += usize::from(c.zeroed > 0);
        f.dir_ops_landed += usize::from(c.dir_ops_landed);
        std::fs::remove_dir_all(&records).expect("remove the records");
        // Media corruption, one cut in twenty: a random byte of a random
        // file flipped.
        let corrupt = rng.gen_ratio(1, 20) && {
            let files: Vec<_> = powerloss::files(&dir)
                .into_iter()
                .filter(|(_, (_, d))| !d.is_empty())
                .collect();
            if files.is_empty() {
                false
            } else {
                let (name, (_, mut data)) = files[rng.gen_range(0..files.len())].clone();
                let at = rng.gen_range(0..data.len());
                data[at] ^= 1 << rng.gen_range(0..8);
                std::fs::write(dir.join(name), data).expect("corrupt");
                true
            }
        };
        f.corrupted += usize::from(corrupt);

        // The next start.
        take_log();
        let fresh = Conntrack::new(ConntrackConfig::default());
        // As sluiced starts: checked and indexed, then put back in the
        // background (waited for here, with its last log line).
        let (tx, rx) = std::sync::mpsc::channel();
        let restored = state::begin_restore(&path, &fresh, move |d| {
            let _ = tx.send(d);
        });
        let done = restored.as_ref().map(|_| {
            rx.recv_timeout(std::time::Duration::from_secs(120))
                .expect("the background restore ends")
        });
        let log = take_log();
        let got = model_of(&fresh);
        let bad = dir.join("conntrack.state.bad");
        if bad.exists() {
            assert!(restored.is_none() && got.is_empty(), "cut {cut}");
            assert!(
                corrupt,
                "cut {cut}: a power cut alone made the saved state unreadable: {log:?}"
            );
            assert_eq!(log.len(), 1, "cut {cut}: one log line: {log:?}");
            assert!(
                log[0].contains("discarded saved connections") && log[0].contains("starting empty"),
                "cut {cut}: {log:?}"
            );
            f.discarded += 1;
            f.corrupted_discarded += 1;
            for n in ["conntrack.state.bad", "conntrack.state.journal.bad"] {
                let _ = std::fs::remove_file(dir.join(n));
            }
        } else {
            match &restored {
                Some(r) => {
                    // "restoring N ..." before forwarding, "restored N ..."
                    // at the background restore's end.
                    assert_eq!(log.len(), 2, "cut {cut}: two log lines: {log:?}");
                    assert!(log[0].contains("restoring"), "cut {cut}: {log:?}");
                    assert!(log[1].contains("restored"), "cut {cut}: {log:?}");
                    let d = done.expect("waited for");
                    assert_eq!(d.stats.skipped, 0, "cut {cut}");
                    // (One with little left may expire in between.)
                    assert_eq!(
                        d.stats.restored + d.stats.expired,
                        r.restored.restored,
                        "cut {cut}"
                    );
                    f.restored_conns += d.stats.restored;
                }
                None => assert!(log.is_empty(), "cut {cut}: {log:?}"),
            }
            if got == acked {
                f.recovered_last += 1;
            } else if got == in_progress {
                f.recovered_newer += 1;
            } else if corrupt && written.contains(&digest(&got)) {
                // A corrupted last frame reads as a torn one: dropped.
                f.corrupted_older += 1;
            } else {
                f.lost += 1;
                failures.push(format!(
                    "cut {cut}: restored {} connections that are neither the last completed save ({}) nor the one under way ({}){}; log {log:?}",
                    got.len(),
                    acked.len(),
                    in_progress.len(),
                    if corrupt { ", after a corruption, nor any state ever saved" } else { "" }
                ));
            }
        }
        // The new process goes on with what it restored.
        ct = fresh;
        model = got;
        inc = new_saver(&mut rng);
    }
    let restored_avg = f.restored_conns / f.cuts.max(1);
    println!(
        "power cuts of the state file: {} cuts after {} completed saves ({} compactions, {} other rounds that scanned the table, the rest followed the change log; {} cuts during a compaction's renames): {} restored the last completed save, {} the save under way (it reached the disk), {} discarded with one log line, lost acknowledged = {}; {} cuts kept part of an unsynced tail ({} as zeros), {} kept the unsynced directory operations; {} cuts also flipped a byte: {} discarded, {} restored an older save (a corrupt last frame reads as torn), never a state no save wrote; {restored_avg} connections restored per start on average; seed {seed:#x}",
        f.cuts,
        f.rounds,
        f.compactions,
        f.scans,
        f.in_compaction,
        f.recovered_last,
        f.recovered_newer,
        f.discarded,
        f.lost,
        f.tails,
        f.zeroed,
        f.dir_ops_landed,
        f.corrupted,
        f.corrupted_discarded,
        f.corrupted_older,
    );
    assert!(
        failures.is_empty(),
        "{} cuts lost an acknowledged save or restored corrupt state: {failures:#?}",
        failures.len()
    );
    assert!(
        f.in_compaction > 0 || cuts < 50,
        "no cut landed in a compaction: the campaign does not test the renames"
    );
    assert!(
        f.tails > 0 || cuts < 50,
        "no cut kept an unsynced tail: the torn-frame path is untested"
    );
}

#[test]
fn power_cuts_of_the_state_file() {
    if powerloss::is_child() {
        let shim = InProcess::get().expect("the power-loss shim is preloaded in the child");
        campaign(shim);
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let shim = match powerloss::build_shim(work.path()) {
        Ok(s) => s,
        Err(why) => {
            sluice_testkit::report_skip!("SKIPPED powercut_state: {why}");
            return;
        }
    };
    let st = powerloss::rerun_under_shim(&shim, "power_cuts_of_the_state_file", &[]);
    assert!(
        st.success(),
        "the campaign under the power-loss shim failed: {st}"
    );
}
