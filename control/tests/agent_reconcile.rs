//! The agent's [`Reconciler`] without I/O: what it commits against what
//! `sluiced` holds, what it writes back, and that its own writes do not
//! make it write or commit again. The process-level behaviour (real
//! nestdb-server, a stand-in sluiced, the agent binary) is in `agent.rs`.

use std::collections::{BTreeMap, BTreeSet};

use nestdb_client::node::{LogicalPort, NodeConfig, NodeStatus as StatusRow, NodeType};
use sluice_api::node::{apply, NodeCommitReply, NodeProgram, NodeStatus, PortStatus};
use sluice_control::agent::compile::{compile, NodeRows};
use sluice_control::agent::reconcile::{ignored_settings, Reconciler, Snapshot, StatusWrite};
use sluice_testkit::rows::{self, uuid};

/// Node config of `node-a` without the node MAC (see
/// [`rows::node_config`]).
fn node_config() -> NodeConfig {
    NodeConfig {
        external_ids: BTreeMap::new(),
        ..rows::node_config()
    }
}

/// Port `name` at 10.244.1.`last` (no prefix length), no pod.
fn lp(name: &str, last: u8) -> LogicalPort {
    LogicalPort {
        ips: BTreeSet::from([format!("10.244.1.{last}")]),
        ..rows::logical_port(name, &format!("0a:58:0a:f4:01:{last:02x}"), "")
    }
}

fn snap(ports: &[(u64, LogicalPort)]) -> Snapshot {
    Snapshot {
        rows: NodeRows {
            node_config: vec![(uuid(1), node_config())],
            logical_ports: ports.iter().map(|(u, p)| (uuid(*u), p.clone())).collect(),
            ..NodeRows::default()
        },
        txn_id: Some(uuid(0xabc)),
        ..Snapshot::default()
    }
}

fn status(instance: &str, generation: u64, ports: &[(&str, u16, bool)]) -> NodeStatus {
    NodeStatus {
        generation,
        instance_id: instance.into(),
        uptime_ms: 1,
        ports: ports
            .iter()
            .map(|(n, o, fwd)| {
                (
                    n.to_string(),
                    PortStatus {
                        ofport: *o,
                        up: *fwd,
                        forwarding: *fwd,
                    },
                )
            })
            .collect(),
    }
}

/// The `Node_Status` row among `writes` (there must be one).
fn node_status_row(writes: &[StatusWrite]) -> StatusRow {
    writes
        .iter()
        .find_map(|w| match w {
            StatusWrite::NodeStatus { row, .. } => Some(row.clone()),
            _ => None,
        })
        .expect("a Node_Status write")
}

/// Applies status writes to a snapshot, as the monitor would show them.
fn write_back(s: &mut Snapshot, writes: &[StatusWrite]) {
    for w in writes {
        match w {
            StatusWrite::NodeStatus { uuid: u, row } => {
                let u = u.unwrap_or(uuid(0x5747));
                s.status.retain(|(x, _)| *x != u);
                s.status.push((u, row.clone()));
            }
            StatusWrite::LogicalPort {
                uuid: u,
                dp_port,
                up,
                ..
            } => {
                let (_, p) = s
                    .rows
                    .logical_ports
                    .iter_mut()
                    .find(|(x, _)| x == u)
                    .unwrap();
                if let Some(d) = dp_port {
                    p.dp_port = *d;
                }
                if let Some(v) = up {
                    p.up = *v;
                }
            }
        }
    }
}

#[test]
fn nothing_is_planned_before_sluiced_is_known_and_everything_on_an_empty_sluiced() {
    let mut r = Reconciler::new();
    let s = snap(&[(10, lp("pod-a", 5))]);
    assert!(
        r.plan(&s).commit.is_none(),
        "no commit without a held state"
    );
    assert!(r.status_writes(&s, &status("i1", 0, &[])).is_empty());
    r.set_held(&status("i1", 0, &[]), NodeProgram::default(), None);
    let c = r.plan(&s).commit.expect("a first push");
    assert_eq!((c.generation, c.expected_generation), (1, Some(0)));
    let want = compile(&s.rows).program;
    assert_eq!(apply(&NodeProgram::default(), &c), want);
    assert_eq!(
        c.ports_added.keys().collect::<Vec<_>>(),
        ["host", "pod-a", "uplink"]
    );
}

#[test]
fn after_a_commit_only_the_difference_is_planned_and_no_change_plans_nothing() {
    let mut r = Reconciler::new();
    r.set_held(&status("i1", 0, &[]), NodeProgram::default(), None);
    let s1 = snap(&[(10, lp("pod-a", 5))]);
    let c1 = r.plan(&s1).commit.unwrap();
    r.committed(&NodeCommitReply {
        generation: c1.generation,
        ..Default::default()
    });
    assert!(r.plan(&s1).commit.is_none(), "nothing changed");
    let s2 = snap(&[(10, lp("pod-a", 5)), (11, lp("pod-b", 6))]);
    let c2 = r.plan(&s2).commit.unwrap();
    assert_eq!((c2.generation, c2.expected_generation), (2, Some(1)));
    assert_eq!(c2.ports_added.keys().collect::<Vec<_>>(), ["pod-b"]);
    assert!(c2.ports_removed.is_empty() && c2.settings.is_none());
    assert_eq!(
        apply(&compile(&s1.rows).program, &c2),
        compile(&s2.rows).program
    );
}

#[test]
fn a_restarted_agent_that_reads_what_sluiced_holds_plans_nothing() {
    let s = snap(&[(10, lp("pod-a", 5))]);
    let held = compile(&s.rows).program;
    let mut r = Reconciler::new();
    r.set_held(&status("i1", 7, &[]), held, None);
    assert!(r.plan(&s).commit.is_none());
}

#[test]
fn a_new_instance_or_generation_makes_the_held_state_stale() {
    let mut r = Reconciler::new();
    assert!(r.is_stale(&status("i1", 0, &[])));
    r.set_held(&status("i1", 3, &[]), NodeProgram::default(), None);
    assert!(!r.is_stale(&status("i1", 3, &[])));
    assert!(r.is_stale(&status("i1", 4, &[])), "someone else committed");
    assert!(r.is_stale(&status("i2", 3, &[])), "sluiced restarted");
}

#[test]
fn status_is_written_once_and_up_only_when_forwarding() {
    let mut r = Reconciler::new();
    r.set_held(&status("i1", 0, &[]), NodeProgram::default(), None);
    let mut s = snap(&[(10, lp("pod-a", 5)), (11, lp("pod-b", 6))]);
    let c = r.plan(&s).commit.unwrap();
    r.committed(&NodeCommitReply {
        generation: c.generation,
        ..Default::default()
    });
    // sluiced shows pod-a forwarding, pod-b present but not forwarding.
    let st = status("i1", 1, &[("pod-a", 3, true), ("pod-b", 4, false)]);
    let w = r.status_writes(&s, &st);
    let row = w
        .iter()
        .find_map(|w| match w {
            StatusWrite::NodeStatus { uuid: None, row } => Some(row.clone()),
            _ => None,
        })
        .expect("Node_Status inserted");
    assert_eq!(
        (
            row.generation,
            row.instance_id.as_str(),
            row.node_name.as_str()
        ),
        (1, "i1", "node-a")
    );
    assert_eq!(row.txn_id, Some(uuid(0xabc).to_string()));
    assert!(row.row_errors.is_empty());
    let ports: BTreeMap<String, (Option<Option<u32>>, Option<bool>)> = w
        .iter()
        .filter_map(|w| match w {
            StatusWrite::LogicalPort {
                name, dp_port, up, ..
            } => Some((name.clone(), (*dp_port, *up))),
            _ => None,
        })
        .collect();
    assert_eq!(ports["pod-a"], (Some(Some(3)), Some(true)));
    assert_eq!(
        ports["pod-b"],
        (Some(Some(4)), None),
        "not forwarding: stays down"
    );
    // Once written, nothing more to write and nothing to commit, even
    // though the writes are new transactions.
    write_back(&mut s, &w);
    s.txn_id = Some(uuid(0xdef));
    assert!(
        r.plan(&s).commit.is_none(),
        "dp_port written back changes no port number"
    );
    assert_eq!(r.status_writes(&s, &st), []);
    // pod-b starts forwarding: only its `up` is written.
    let st2 = status("i1", 1, &[("pod-a", 3, true), ("pod-b", 4, true)]);
    let w2 = r.status_writes(&s, &st2);
    assert_eq!(
        w2,
        [StatusWrite::LogicalPort {
            uuid: uuid(11),
            name: "pod-b".into(),
            dp_port: None,
            up: Some(true)
        }]
    );
}

#[test]
fn row_errors_are_reported_once_and_recorded_in_the_status() {
    let mut r = Reconciler::new();
    r.set_held(&status("i1", 0, &[]), NodeProgram::default(), None);
    let mut bad = lp("pod-bad", 7);
    bad.mac = "zz:zz:zz:zz:zz:zz".into();
    let mut s = snap(&[(10, lp("pod-a", 5)), (12, bad)]);
    let p1 = r.plan(&s);
    assert_eq!(p1.new_errors.len(), 1, "{:?}", p1.new_errors);
    assert_eq!(p1.new_errors[0].key, "pod-bad");
    let c = p1.commit.expect("the rest applies");
    assert!(c.ports_added.contains_key("pod-a") && !c.ports_added.contains_key("pod-bad"));
    r.committed(&NodeCommitReply {
        generation: 1,
        ..Default::default()
    });
    // Another update with the same bad row: not reported again.
    s.rows.logical_ports.push((uuid(13), lp("pod-c", 8)));
    let p2 = r.plan(&s);
    assert!(p2.new_errors.is_empty() && p2.resolved.is_empty());
    let row = node_status_row(&r.status_writes(&s, &status("i1", 1, &[])));
    assert!(
        row.row_errors["Logical_Port pod-bad"].contains("not a MAC address"),
        "{:?}",
        row.row_errors
    );
    // Fixed: reported as resolved.
    s.rows.logical_ports.retain(|(u, _)| *u != uuid(12));
    let p3 = r.plan(&s);
    assert_eq!(p3.resolved.len(), 1);
}

#[test]
fn txn_id_survives_an_agent_restart_and_changes_only_with_a_commit() {
    let s = snap(&[(10, lp("pod-a", 5))]);
    let existing = StatusRow {
        node_name: "node-a".into(),
        generation: 4,
        txn_id: Some(uuid(0x111).to_string()),
        instance_id: "i1".into(),
        row_errors: BTreeMap::new(),
        commit_error: None,
        external_ids: BTreeMap::new(),
    };
    let mut s2 = s.clone();
    s2.status.push((uuid(0x5747), existing.clone()));
    let mut r = Reconciler::new();
    r.set_held(
        &status("i1", 4, &[]),
        compile(&s.rows).program,
        Some(&existing),
    );
    assert!(r.plan(&s2).commit.is_none());
    let w = r.status_writes(&s2, &status("i1", 4, &[]));
    assert!(
        !w.iter()
            .any(|w| matches!(w, StatusWrite::NodeStatus { .. })),
        "the status row is still true: {w:?}"
    );
    // A different sluiced: the old txn id says nothing about it.
    let mut r2 = Reconciler::new();
    r2.set_held(
        &status("i2", 0, &[]),
        NodeProgram::default(),
        Some(&existing),
    );
    let row = node_status_row(&r2.status_writes(&s2, &status("i2", 0, &[])));
    assert_eq!((row.txn_id, row.generation), (None, 0));
}

#[test]
fn a_refused_commit_is_recorded_until_one_succeeds() {
    let mut r = Reconciler::new();
    r.set_held(&status("i1", 0, &[]), NodeProgram::default(), None);
    let s = snap(&[(10, lp("pod-a", 5))]);
    r.plan(&s).commit.unwrap();
    r.refused("node-commit refused at port \"pod-a\": no such interface".into());
    let w = r.status_writes(&s, &status("i1", 0, &[]));
    assert!(w.iter().any(|w| matches!(w,
        StatusWrite::NodeStatus { row, .. } if row.commit_error.as_deref().is_some_and(|e| e.contains("pod-a")) && row.generation == 0)));
    // Retried: the same commit again (sluiced still holds generation 0).
    let c = r.plan(&s).commit.unwrap();
    assert_eq!(c.expected_generation, Some(0));
    r.committed(&NodeCommitReply {
        generation: 1,
        ..Default::default()
    });
    let w = r.status_writes(&s, &status("i1", 1, &[]));
    assert!(w.iter().any(|w| matches!(w,
        StatusWrite::NodeStatus { row, .. } if row.commit_error.is_none() && row.generation == 1)));
}

#[test]
fn ignored_node_config_settings_are_named() {
    let mut c = node_config();
    assert!(ignored_settings(&c).is_empty());
    c.node_type = NodeType::Edge;
    c.ovs_bridge = Some("br-int".into());
    c.pod_cidrs.insert("fd00:1::/64".into());
    c.node_ips.insert("2001:db8::1".parse().unwrap());
    c.external_ids.insert("vni".into(), "7".into());
    c.external_ids.insert("cores".into(), "2-3".into());
    let w = ignored_settings(&c).join("\n");
    for needle in [
        "node_type is EDGE",
        "ovs_bridge",
        "fd00:1::/64",
        "2001:db8::1",
        "external_ids:cores",
    ] {
        assert!(w.contains(needle), "{needle} in {w}");
    }
    assert!(!w.contains("external_ids:vni"), "{w}");
    // Reported once per distinct setting across plans.
    let mut r = Reconciler::new();
    let mut s = snap(&[]);
    s.rows.node_config[0].1 = c;
    assert_eq!(r.plan(&s).new_ignored.len(), 5);
    assert!(r.plan(&s).new_ignored.is_empty());
}

#[test]
fn a_port_sluiced_refuses_is_left_out_until_its_row_changes() {
    use sluice_api::node::{item_error, CommitItem};
    use sluice_api::ErrorCode;
    use sluice_control::agent::reconcile::refused_port;
    let e = item_error(
        ErrorCode::NotFound,
        &CommitItem::Port("pod-b".into()),
        "no interface sl0123 on this host",
    );
    assert_eq!(refused_port(&e.message).as_deref(), Some("pod-b"));
    assert_eq!(
        refused_port("node-commit refused at the node settings: x"),
        None
    );

    let mut r = Reconciler::new();
    r.set_held(&status("i1", 0, &[]), NodeProgram::default(), None);
    let mut s = snap(&[(10, lp("pod-a", 5)), (11, lp("pod-b", 6))]);
    assert!(r.plan(&s).commit.unwrap().ports_added.contains_key("pod-b"));
    assert!(r.refuse_port("pod-b", &e.message));
    assert!(!r.refuse_port("pod-b", &e.message), "already left out");
    assert!(!r.refuse_port("uplink", &e.message), "not a Logical_Port");
    let p = r.plan(&s);
    let c = p.commit.expect("the rest applies");
    assert!(c.ports_added.contains_key("pod-a") && !c.ports_added.contains_key("pod-b"));
    assert_eq!(p.new_errors.len(), 1);
    assert!(p.new_errors[0].sentence.contains("no interface sl0123"));
    r.committed(&NodeCommitReply {
        generation: 1,
        ..Default::default()
    });
    // The agent's own writes to the row do not bring it back...
    s.rows.logical_ports[1].1.dp_port = Some(9);
    assert!(r.plan(&s).commit.is_none());
    // ...a change of the row does.
    s.rows.logical_ports[1].1.mac = "0a:58:0a:f4:01:66".into();
    let p = r.plan(&s);
    assert!(p.commit.unwrap().ports_added.contains_key("pod-b"));
    assert_eq!(p.resolved.len(), 1);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// One step of a random history.
    #[derive(Debug, Clone)]
    enum Step {
        /// The database now holds these pods (by index, 0..8).
        Rows(Vec<u8>),
        /// sluiced restarts (empty program, generation 0, new instance).
        Restart,
        /// The agent restarts (reads what sluiced holds).
        AgentRestart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => proptest::collection::vec(0u8..8, 0..8).prop_map(Step::Rows),
            1 => Just(Step::Restart),
            1 => Just(Step::AgentRestart),
        ]
    }

    proptest! {
        /// Whatever happens, after each round sluiced holds exactly the
        /// compiled program, every commit is against the held generation,
        /// and a second round with nothing new plans nothing.
        #[test]
        fn sluiced_always_ends_up_with_the_compiled_program(
            steps in proptest::collection::vec(step(), 1..20)
        ) {
            let mut instance = 1u32;
            let (mut gen, mut held) = (0u64, NodeProgram::default());
            let mut r = Reconciler::new();
            let mut pods: Vec<(u64, LogicalPort)> = Vec::new();
            for st in steps {
                match st {
                    Step::Rows(ix) => {
                        let set: BTreeSet<u8> = ix.into_iter().collect();
                        pods = set
                            .iter()
                            .map(|i| (100 + u64::from(*i), lp(&format!("pod-{i}"), 10 + i)))
                            .collect();
                    }
                    Step::Restart => {
                        instance += 1;
                        gen = 0;
                        held = NodeProgram::default();
                    }
                    Step::AgentRestart => r = Reconciler::new(),
                }
                let s = snap(&pods);
                let status = status(&format!("i{instance}"), gen, &[]);
                if r.is_stale(&status) {
                    r.set_held(&status, held.clone(), None);
                }
                if let Some(c) = r.plan(&s).commit {
                    prop_assert_eq!(c.expected_generation, Some(gen));
                    prop_assert_eq!(c.generation, gen + 1);
                    held = apply(&held, &c);
                    gen = c.generation;
                    r.committed(&NodeCommitReply { generation: gen, ..Default::default() });
                }
                prop_assert_eq!(&held, &compile(&s.rows).program);
                prop_assert!(r.plan(&s).commit.is_none());
            }
        }
    }
}

/// After the first plan, row changes are compiled incrementally: the
/// commit is exactly their difference (no second full compile). A refused
/// commit leaves sluiced's program unknown to the reconciler: nothing is
/// planned until it is read again, then the diff against it goes.
#[test]
fn row_changes_plan_their_difference_and_a_refusal_reads_the_program_again() {
    use nestdb_client::{ChangeKind, RowChange, TableRow};
    let mut r = Reconciler::new();
    let s1 = snap(&[(10, lp("pod-a", 5))]);
    r.set_held(&status("i1", 0, &[]), NodeProgram::default(), None);
    let c1 = r.plan(&s1).commit.expect("a first push");
    r.committed(&NodeCommitReply {
        generation: c1.generation,
        ..Default::default()
    });
    assert_eq!((r.full_compiles(), r.incremental_updates()), (1, 0));
    let s2 = snap(&[(10, lp("pod-a", 5)), (11, lp("pod-b", 6))]);
    let change = RowChange {
        table: "Logical_Port".into(),
        uuid: uuid(11),
        kind: ChangeKind::Insert,
        old: None,
        new: Some(lp("pod-b", 6).to_row().into()),
    };
    let c2 = r
        .plan_changes(
            std::slice::from_ref(&change),
            &s2.rows.logical_ports,
            s2.txn_id,
        )
        .commit
        .expect("pod-b's commit");
    assert_eq!((c2.generation, c2.expected_generation), (2, Some(1)));
    let (p1, p2) = (compile(&s1.rows).program, compile(&s2.rows).program);
    assert_eq!(c2, {
        let mut d = sluice_api::node::diff(&p1, &p2);
        d.generation = 2;
        d.expected_generation = Some(1);
        d
    });
    assert_eq!((r.full_compiles(), r.incremental_updates()), (1, 1));
    // Refused: sluiced still holds p1, which the reconciler no longer has.
    r.refused("no".into());
    assert!(r.needs_read());
    assert!(r.is_stale(&status("i1", 1, &[])));
    assert!(r
        .plan_changes(&[], &s2.rows.logical_ports, s2.txn_id)
        .commit
        .is_none());
    r.set_held(&status("i1", 1, &[]), p1.clone(), None);
    let again = r
        .plan_changes(&[], &s2.rows.logical_ports, s2.txn_id)
        .commit
        .expect("the diff against what sluiced holds");
    assert_eq!(apply(&p1, &again), p2);
    r.committed(&NodeCommitReply {
        generation: again.generation,
        ..Default::default()
    });
    // The same change again (a batch overlapping what was applied):
    // nothing to send.
    assert!(r
        .plan_changes(&[change], &s2.rows.logical_ports, s2.txn_id)
        .commit
        .is_none());
    assert_eq!(r.full_compiles(), 1);
}
