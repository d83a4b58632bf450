//! The hand-over restart: how a new `sluiced` (`--take-over`) takes the
//! node's datapath from the running one without dropping connections, and
//! `restart-report`, what the last restart cost.
//!
//! The steps, each a method the new process calls on the old one's
//! control socket:
//! 1. [`HandoverPrepare`]: the old process writes its state (connections
//!    with NAT and timers, Service affinity, learned MACs, in the
//!    versioned conntrack state format) to a file the new one names, and answers with its node
//!    program and generation, its ports and its DPDK file prefix. It keeps
//!    forwarding. It connects to the new one's *lease* socket and watches
//!    it: the connection closing before step 3 means the new process died.
//!    The new process then opens the ports that two processes can hold at
//!    once (af_packet) without polling them, and commits the program.
//! 2. [`HandoverRelease`]: the old process stops polling its ports, closes
//!    them (the host port's addresses go back to the uplink), writes the
//!    connections opened since step 1 (the delta, from a log of the
//!    creations since step 1) and answers with its port counters. The new
//!    one restores the delta, empties its sockets' rx rings (frames the
//!    old one forwarded, or lost in the gap: never forwarded twice),
//!    starts polling, opens the ports that could not be shared, and
//!    forwards.
//! 3. [`HandoverCommit`]: the old process exits.
//!
//! If the lease closes between 1 and 3 (the new process died, or gave up
//! and closed it), the old one reopens its ports and keeps forwarding.
//!
//! Thread-safety: plain data.

use serde::{Deserialize, Serialize};

use crate::node::NodeProgram;
use crate::{method, ApiError, Empty, FromArgs, Render};

/// Step 1's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareRequest {
    /// The new process's pid (logged, and killed if it hangs).
    pub pid: u32,
    /// Where to write the state (a file the new process reads).
    pub state_path: String,
    /// The new process's lease socket (a listening unix socket).
    pub lease_path: String,
    /// The new process's version.
    pub version: String,
}

/// One port the old process has open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverPort {
    /// Name.
    pub name: String,
    /// OpenFlow number.
    pub ofport: u16,
    /// `config`, `pod` or `devargs`.
    pub kind: String,
    /// The devargs it was opened with.
    pub devargs: String,
    /// Rx queues.
    pub rx_queues: u16,
}

/// Step 1's reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepareReply {
    /// The old process's version.
    pub version: String,
    /// Its DPDK file prefix (the new one must use another).
    pub file_prefix: String,
    /// The generation in force.
    pub generation: u64,
    /// The node program.
    pub program: NodeProgram,
    /// Its ports.
    pub ports: Vec<HandoverPort>,
    /// Connections written.
    pub conns: u64,
    /// Affinity entries written.
    pub affinity: u64,
    /// Bytes written.
    pub state_bytes: u64,
    /// Time to write them, µs.
    pub save_us: u64,
}

/// Step 2's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The same pid as in step 1.
    pub pid: u32,
    /// Where to write the connections once the ports are closed.
    pub delta_path: String,
}

/// Step 2's reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReply {
    /// Connections written after the ports closed.
    pub conns: u64,
    /// Bytes written.
    pub state_bytes: u64,
    /// Frames the old process's ports counted as lost (missed, errors,
    /// no buffer) between step 1 and closing.
    pub frames_lost: u64,
    /// Frames received by the old process's ports in all.
    pub rx_packets: u64,
    /// Time to stop polling, close the ports and write the delta, µs.
    pub release_us: u64,
}

/// Step 3's and the abort's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRequest {
    /// The same pid as in step 1.
    pub pid: u32,
}

macro_rules! json_args {
    ($($t:ty),*) => {$(
        impl FromArgs for $t {
            fn from_args(args: &[String]) -> Result<Self, ApiError> {
                let a = args.first().map(String::as_str).unwrap_or("{}");
                serde_json::from_str(a).map_err(|e| {
                    ApiError::invalid(format!("expected a JSON object: {e}"))
                })
            }
        }
        impl Render for $t {
            fn render(&self) -> String {
                serde_json::to_string(self).unwrap_or_default() + "\n"
            }
        }
    )*};
}
json_args!(
    PrepareRequest,
    PrepareReply,
    ReleaseRequest,
    ReleaseReply,
    PidRequest
);

method!(
    /// Hand-over step 1 (called by the new process): write the state.
    HandoverPrepare, "handover-prepare", "JSON", (1, 1), PrepareRequest => PrepareReply);
method!(
    /// Hand-over step 2: stop polling, close the ports, write the delta.
    HandoverRelease, "handover-release", "JSON", (1, 1), ReleaseRequest => ReleaseReply);
method!(
    /// Hand-over step 3: the new process forwards; the old one exits.
    HandoverCommit, "handover-commit", "JSON", (1, 1), PidRequest => Empty);

/// How the running process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartKind {
    /// No previous state (first start, or nothing saved).
    #[default]
    Fresh,
    /// Took over from a running process.
    HandOver,
    /// Restored the state file of a process that died.
    CrashRestore,
}

/// `restart-report`: what the last restart of `sluiced` cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartReport {
    /// How this process started.
    pub kind: RestartKind,
    /// The previous process's pid (hand-over).
    pub previous_pid: Option<u32>,
    /// The previous process's version (hand-over).
    pub previous_version: Option<String>,
    /// From asking for the state to the old process's exit being
    /// requested, ms (hand-over); the restore, ms (crash restore).
    pub duration_ms: f64,
    /// The ports' gap: from the old process closing its ports to this one
    /// polling them, ms (hand-over).
    pub gap_ms: f64,
    /// Frames the ports counted as lost during the hand-over (old process's
    /// missed/errors plus this one's at the end of the hand-over).
    pub frames_lost: u64,
    /// Connections carried over (restored).
    pub conns_carried: u64,
    /// Of which restored from the delta (opened during the copy).
    pub conns_delta: u64,
    /// Saved connections not restored (key taken, table full).
    pub conns_skipped: u64,
    /// Service affinity entries carried over.
    pub affinity_carried: u64,
    /// Learned MAC entries carried over (hand-over from a sluiced that
    /// saves them: state format 4 on).
    #[serde(default)]
    pub macs_carried: u64,
    /// Bytes of state read (snapshot plus delta, or the state file).
    pub state_bytes: u64,
    /// Time spent on the state: writing it (old process), reading and
    /// restoring it (this one), snapshot plus delta, ms.
    #[serde(default)]
    pub state_ms: f64,
    /// Age of the saved state when restored, ms (crash restore).
    pub state_age_ms: Option<u64>,
    /// Crash restore: from the start of the restore until every saved
    /// connection was back in the table, ms (the PMDs forward meanwhile:
    /// `state_ms` is what they waited for); None while it runs.
    #[serde(default)]
    pub restore_done_ms: Option<f64>,
    /// Unix time of the restart, ms.
    pub at_unix_ms: u64,
}

impl Render for RestartReport {
    fn render(&self) -> String {
        let kind = match self.kind {
            RestartKind::Fresh => "fresh start (nothing carried over)",
            RestartKind::HandOver => "hand-over",
            RestartKind::CrashRestore => "crash restore (state file)",
        };
        let mut s = format!("last restart: {kind}\n");
        if let Some(p) = self.previous_pid {
            s += &format!(
                "  previous: pid {p}, version {}\n",
                self.previous_version.as_deref().unwrap_or("?")
            );
        }
        s += &format!("  duration: {:.1} ms\n", self.duration_ms);
        if self.kind == RestartKind::HandOver {
            s += &format!("  port gap: {:.1} ms\n", self.gap_ms);
            s += &format!("  frames lost (port counters): {}\n", self.frames_lost);
        }
        s += &format!(
            "  connections carried over: {} ({} from the delta, {} skipped)\n",
            self.conns_carried, self.conns_delta, self.conns_skipped
        );
        s += &format!(
            "  affinity entries carried over: {}\n",
            self.affinity_carried
        );
        if self.kind == RestartKind::HandOver {
            s += &format!("  learned MACs carried over: {}\n", self.macs_carried);
        }
        s += &format!(
            "  state: {} bytes, {:.1} ms to write and restore\n",
            self.state_bytes, self.state_ms
        );
        if let Some(a) = self.state_age_ms {
            s += &format!("  state age: {a} ms\n");
        }
        if self.kind == RestartKind::CrashRestore {
            match self.restore_done_ms {
                Some(ms) => s += &format!("  all saved connections back after: {ms:.1} ms\n"),
                None => s += "  saved connections: still going back (background)\n",
            }
        }
        s
    }
}

method!(
    /// What the last restart cost: kind, duration, gap, frames lost,
    /// connections carried over.
    QueryRestartReport, "restart-report", "", (0, 0), Empty => RestartReport);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_and_round_trips() {
        let r = RestartReport {
            kind: RestartKind::HandOver,
            previous_pid: Some(7),
            gap_ms: 12.5,
            conns_carried: 100,
            ..Default::default()
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"hand-over\""), "{j}");
        assert_eq!(serde_json::from_str::<RestartReport>(&j).unwrap(), r);
        let t = r.render();
        assert!(
            t.contains("hand-over") && t.contains("port gap: 12.5 ms"),
            "{t}"
        );
        assert!(t.contains("connections carried over: 100"), "{t}");
    }

    #[test]
    fn requests_parse_from_json_args() {
        let r = ReleaseRequest::from_args(&[r#"{"pid":3,"delta_path":"/x"}"#.into()]).unwrap();
        assert_eq!(r.pid, 3);
        assert!(PidRequest::from_args(&["nope".into()]).is_err());
    }
}
