//! nestdb-server's Prometheus metrics (`--metrics-address`): transactions
//! committed and failed, commit latency (a transaction applied to the
//! moment its log write is on disk, which is when it is acknowledged),
//! fsync batches, sessions and monitors, and per database its log size and
//! row count.
//!
//! The event loop publishes a [`Snapshot`] once per iteration (after its
//! fsyncs) and observes commit latencies into a histogram of atomics; the
//! metrics thread only reads them, so a scrape never waits for the loop
//! nor the loop for a scrape beyond one short mutex hold.
//!
//! Thread-safety: [`Metrics`] is shared by the loop and the endpoint.

use std::sync::Mutex;

use sluice_metrics::{Exposition, Histogram, Kind};

use crate::server::Stats;

/// One database's figures.
#[derive(Debug, Clone, Default)]
pub struct DbSnapshot {
    /// Schema name.
    pub name: String,
    /// Bytes in its log file.
    pub log_bytes: u64,
    /// Rows in all its tables.
    pub rows: usize,
}

/// What the loop publishes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The counters `stats` shows.
    pub stats: Stats,
    /// Open sessions.
    pub sessions: usize,
    /// Monitors across sessions.
    pub monitors: usize,
    /// The databases served.
    pub dbs: Vec<DbSnapshot>,
}

/// The metrics shared between the event loop and the endpoint.
#[derive(Debug)]
pub struct Metrics {
    /// Commit latency, seconds.
    pub commit_seconds: Histogram,
    snapshot: Mutex<Snapshot>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            commit_seconds: Histogram::new(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            snapshot: Mutex::new(Snapshot::default()),
        }
    }
}

impl Metrics {
    /// Replaces the published figures.
    pub fn publish(&self, s: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// One scrape.
    pub fn render(&self) -> String {
        let s = self
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut e = Exposition::new();
        let st = &s.stats;
        let counters: [(&str, &str, u64); 7] = [
            (
                "nestdb_transactions_total",
                "Transactions committed.",
                st.commits,
            ),
            (
                "nestdb_transactions_failed_total",
                "Transactions that failed.",
                st.failed_txns,
            ),
            ("nestdb_fsyncs_total", "Log fsync batches.", st.syncs),
            (
                "nestdb_sessions_accepted_total",
                "Client sessions accepted.",
                st.sessions_accepted,
            ),
            (
                "nestdb_sessions_protocol_errors_total",
                "Sessions closed for protocol errors.",
                st.protocol_errors,
            ),
            (
                "nestdb_sessions_backlog_drops_total",
                "Sessions closed for not reading their output.",
                st.backlog_drops,
            ),
            (
                "nestdb_sessions_memory_drops_total",
                "Sessions closed because all together held too much memory.",
                st.memory_drops,
            ),
        ];
        for (name, help, v) in counters {
            e.family(name, Kind::Counter, help).sample(&[], v as f64);
        }
        e.family(
            "nestdb_commit_seconds",
            Kind::Histogram,
            "From a transaction applied to its log write on disk (then it is acknowledged).",
        );
        self.commit_seconds.write(&mut e, &[]);
        e.family("nestdb_sessions", Kind::Gauge, "Open client sessions.")
            .sample(&[], s.sessions as f64);
        e.family("nestdb_monitors", Kind::Gauge, "Monitors across sessions.")
            .sample(&[], s.monitors as f64);
        e.family(
            "nestdb_log_bytes",
            Kind::Gauge,
            "Size of the database's log file.",
        );
        for d in &s.dbs {
            e.sample(&[("db", &d.name)], d.log_bytes as f64);
        }
        e.family("nestdb_rows", Kind::Gauge, "Rows in the database.");
        for d in &s.dbs {
            e.sample(&[("db", &d.name)], d.rows as f64);
        }
        e.finish()
            .unwrap_or_else(|err| format!("# metrics error: {err}\n"))
    }
}
