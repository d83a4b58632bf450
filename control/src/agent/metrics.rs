//! sluice-agent's Prometheus metrics (`sluice-agent --metrics-address`):
//! how long the node takes to follow its database (from the first
//! database change not yet applied to sluiced acknowledging the commit),
//! the planning and commit times, commits and refusals, the generation in
//! force, the rows skipped, and how often rows were compiled from scratch
//! or incrementally.
//!
//! Thread-safety: atomics written by the agent's loop, read by the
//! endpoint's thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sluice_metrics::{Exposition, Histogram, Kind};

const BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The agent's counters.
#[derive(Debug)]
pub struct AgentMetrics {
    /// From the first unapplied database change to the commit's reply.
    pub sync_seconds: Histogram,
    /// Compile and diff time of a round that committed.
    pub plan_seconds: Histogram,
    /// The node-commit call.
    pub commit_seconds: Histogram,
    /// Commits applied.
    pub commits: AtomicU64,
    /// Commits sluiced refused.
    pub refusals: AtomicU64,
    /// The generation sluiced holds (last seen).
    pub generation: AtomicU64,
    /// Rows skipped with an error.
    pub row_errors: AtomicU64,
    /// Times every row was compiled from scratch (once per agent start).
    pub full_compiles: AtomicU64,
    /// Row-change batches compiled incrementally.
    pub incremental_updates: AtomicU64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            sync_seconds: Histogram::new(&BOUNDS),
            plan_seconds: Histogram::new(&BOUNDS),
            commit_seconds: Histogram::new(&BOUNDS),
            commits: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            row_errors: AtomicU64::new(0),
            full_compiles: AtomicU64::new(0),
            incremental_updates: AtomicU64::new(0),
        }
    }
}

impl AgentMetrics {
    /// One scrape.
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.family(
            "sluice_agent_sync_seconds",
            Kind::Histogram,
            "From the first database change not yet in sluiced to sluiced acknowledging the commit that carries it.",
        );
        self.sync_seconds.write(&mut e, &[]);
        e.family(
            "sluice_agent_plan_seconds",
            Kind::Histogram,
            "Compile and diff time of the rounds that committed.",
        );
        self.plan_seconds.write(&mut e, &[]);
        e.family(
            "sluice_agent_commit_seconds",
            Kind::Histogram,
            "node-commit call time.",
        );
        self.commit_seconds.write(&mut e, &[]);
        e.family(
            "sluice_agent_commits_total",
            Kind::Counter,
            "Commits sluiced applied.",
        )
        .sample(&[], self.commits.load(Relaxed) as f64);
        e.family(
            "sluice_agent_commit_refusals_total",
            Kind::Counter,
            "Commits sluiced refused (nothing of them applied).",
        )
        .sample(&[], self.refusals.load(Relaxed) as f64);
        e.family(
            "sluice_agent_generation",
            Kind::Gauge,
            "The node program's generation sluiced holds.",
        )
        .sample(&[], self.generation.load(Relaxed) as f64);
        e.family(
            "sluice_agent_row_errors",
            Kind::Gauge,
            "Database rows skipped with an error (Node_Status.row_errors).",
        )
        .sample(&[], self.row_errors.load(Relaxed) as f64);
        e.family(
            "sluice_agent_full_compiles_total",
            Kind::Counter,
            "Times every database row was compiled from scratch (once per agent start; each change after that is compiled incrementally).",
        )
        .sample(&[], self.full_compiles.load(Relaxed) as f64);
        e.family(
            "sluice_agent_incremental_updates_total",
            Kind::Counter,
            "Batches of row changes compiled incrementally.",
        )
        .sample(&[], self.incremental_updates.load(Relaxed) as f64);
        e.finish()
            .unwrap_or_else(|err| format!("# metrics error: {err}\n"))
    }
}
