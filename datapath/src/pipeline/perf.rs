//! Per-stage cycle accounting of the flow pipeline (`pmd-perf-show`), on
//! in production.
//!
//! What is exact and what is sampled. Every burst, the pipeline reads the
//! cycle counter ([`crate::time::cycles`]) twice: at the start and after the
//! parse stage (which runs over the whole burst), and once more at the end;
//! so `parse` and `body` (classification plus actions, the per-packet part)
//! are exact totals at three reads per burst. Inside the body, the classifier
//! tiers, actions, conntrack and tunnel work are interleaved per packet, so
//! splitting it needs a read at each transition, that is per packet: that
//! split is taken on one burst in [`DEFAULT_SAMPLE_EVERY`] (configurable, 1
//! = every burst, 0 = never), and `pmd-perf-show` spreads the exact body
//! total over the stages in the proportions of the sampled bursts. On
//! average this costs well under one extra read per burst; the split is an
//! estimate that converges over thousands of bursts, while
//! `parse + body` is exact. The cost of the transition reads of a sampled
//! burst lands in the stage they close, so sampled bursts are slightly
//! slower; unsampled ones do not pay it.
//!
//! Invariant: the transition chain of a sampled burst starts at the same
//! cycle-counter value that ends `parse` and ends at the one that ends
//! `body`, so the sampled stages of a burst add up exactly to its body.
//!
//! Thread-safety: [`StageCycles`] counters have one writer (the PMD that
//! owns the pipeline) and are read by the control socket; [`Split`] is
//! per-pipeline state, never shared.

use crate::stats::Counter;
use crate::time::cycles;

/// One sampled burst in this many has its body split by stage.
pub const DEFAULT_SAMPLE_EVERY: u32 = 64;

/// A stage of the body of a burst (classification and execution), as the
/// sampled split attributes cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    /// Exact-match cache probe (also of recirculated packets).
    Emc,
    /// Megaflow cache (tuple-space) lookup.
    Megaflow,
    /// Slow-path translation and megaflow install (the classifier).
    Upcall,
    /// Datapath actions other than the ones below, rule counters, loop.
    Actions,
    /// `ct(...)`: connection tracking and NAT.
    Conntrack,
    /// Tunnel push (encap) and pop (decap, with the re-parse of the inner frame).
    Tunnel,
}

impl Stage {
    /// Every stage, in display order.
    pub const ALL: [Stage; 6] = [
        Stage::Emc,
        Stage::Megaflow,
        Stage::Upcall,
        Stage::Actions,
        Stage::Conntrack,
        Stage::Tunnel,
    ];

    /// The stage's name in `pmd-perf-show`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Emc => "classify: emc",
            Stage::Megaflow => "classify: megaflow",
            Stage::Upcall => "classify: classifier (upcall)",
            Stage::Actions => "actions",
            Stage::Conntrack => "conntrack",
            Stage::Tunnel => "encap/decap",
        }
    }
}

/// Cycle counters of one flow pipeline (one PMD).
#[derive(Debug, Default)]
pub struct StageCycles {
    /// Bursts processed.
    pub bursts: Counter,
    /// Packets processed.
    pub packets: Counter,
    /// Exact: cycles parsing bursts (key extraction and hash).
    pub parse: Counter,
    /// Exact: cycles classifying and executing bursts after the parse.
    pub body: Counter,
    /// Exact: cycles of the direct stage (`classifier::direct`: parse,
    /// specialised-table lookups, actions and rule counters of the packets
    /// it forwards, and the parse of the ones it leaves to the cascade).
    pub direct: Counter,
    /// Bursts whose body was split by stage.
    pub sampled_bursts: Counter,
    /// Packets of those bursts.
    pub sampled_packets: Counter,
    /// Body cycles of the sampled bursts, by [`Stage`].
    pub sampled: [Counter; Stage::ALL.len()],
}

impl StageCycles {
    /// Total body cycles of the sampled bursts (the sum of `sampled`).
    pub fn sampled_total(&self) -> u64 {
        self.sampled.iter().map(Counter::get).sum()
    }

    /// `body` spread over the stages in the sampled proportions, in
    /// [`Stage::ALL`] order; adds up exactly to `body` (the rounding
    /// remainder goes to the largest stage). `None` before any sample.
    pub fn estimated_split(&self) -> Option<[u64; Stage::ALL.len()]> {
        let body = self.body.get();
        let sampled: Vec<u64> = self.sampled.iter().map(Counter::get).collect();
        let total: u64 = sampled.iter().sum();
        if total == 0 {
            return None;
        }
        let mut out = [0u64; Stage::ALL.len()];
        for (o, s) in out.iter_mut().zip(&sampled) {
            *o = (u128::from(body) * u128::from(*s) / u128::from(total)) as u64;
        }
        let rest = body - out.iter().sum::<u64>();
        let (big, _) = sampled
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| **s)
            .unwrap_or((0, &0));
        out[big] += rest;
        Some(out)
    }
}

/// The transition chain of one burst: where cycles go while a sampled
/// burst is processed. Off (every call a not-taken branch) on other bursts.
#[derive(Debug)]
pub struct Split {
    on: bool,
    last: u64,
    cur: Stage,
    acc: [u64; Stage::ALL.len()],
    every: u32,
    countdown: u32,
}

impl Split {
    /// A split sampling one burst in `every` (0: never).
    pub fn new(every: u32) -> Self {
        Split {
            on: false,
            last: 0,
            cur: Stage::Emc,
            acc: [0; Stage::ALL.len()],
            every,
            countdown: 1,
        }
    }

    /// Starts a burst's body at cycle `t` (the end of its parse): decides
    /// whether this burst is sampled.
    #[inline]
    pub fn begin(&mut self, t: u64) {
        self.on = false;
        if self.every == 0 {
            return;
        }
        self.countdown -= 1;
        if self.countdown == 0 {
            self.countdown = self.every;
            self.on = true;
            self.last = t;
            self.cur = Stage::Emc;
            self.acc = [0; Stage::ALL.len()];
        }
    }

    /// Cycles from the last transition belong to the current stage; from
    /// now on they belong to `s`. One counter read when sampling, nothing
    /// otherwise.
    #[inline(always)]
    pub fn enter(&mut self, s: Stage) {
        if self.on {
            self.enter_slow(s);
        }
    }

    #[inline(never)]
    fn enter_slow(&mut self, s: Stage) {
        let now = cycles();
        self.acc[self.cur as usize] += now.wrapping_sub(self.last);
        self.last = now;
        self.cur = s;
    }

    /// The stage cycles are going to now (for restoring it after a nested
    /// stage).
    #[inline]
    pub fn current(&self) -> Stage {
        self.cur
    }

    /// Ends the burst's body at cycle `t` (the value that ends `body`) and
    /// adds the split of a sampled burst to `c`.
    #[inline]
    pub fn finish(&mut self, t: u64, packets: u64, c: &StageCycles) {
        if !self.on {
            return;
        }
        self.acc[self.cur as usize] += t.wrapping_sub(self.last);
        for (counter, v) in c.sampled.iter().zip(self.acc) {
            counter.add(v);
        }
        c.sampled_bursts.inc();
        c.sampled_packets.add(packets);
        self.on = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_of_a_sampled_burst_adds_up_to_its_body() {
        let c = StageCycles::default();
        let mut s = Split::new(1);
        let t0 = cycles();
        s.begin(t0);
        for st in [
            Stage::Megaflow,
            Stage::Actions,
            Stage::Conntrack,
            Stage::Actions,
        ] {
            s.enter(st);
            std::hint::black_box((0..100).sum::<u64>());
        }
        let t1 = cycles();
        s.finish(t1, 1, &c);
        c.body.add(t1 - t0);
        assert_eq!(c.sampled_total(), t1 - t0);
        assert_eq!(c.sampled_bursts.get(), 1);
        assert_eq!(c.sampled[Stage::Tunnel as usize].get(), 0, "never entered");
        let est = c.estimated_split().expect("one sample");
        assert_eq!(est.iter().sum::<u64>(), c.body.get());
    }

    #[test]
    fn sampling_one_in_n_and_never() {
        let c = StageCycles::default();
        let mut s = Split::new(4);
        for _ in 0..16 {
            s.begin(cycles());
            s.enter(Stage::Actions);
            s.finish(cycles(), 32, &c);
        }
        assert_eq!(c.sampled_bursts.get(), 4);
        assert_eq!(c.sampled_packets.get(), 128);
        let mut s = Split::new(0);
        let c = StageCycles::default();
        for _ in 0..16 {
            s.begin(cycles());
            s.enter(Stage::Actions);
            s.finish(cycles(), 32, &c);
        }
        assert_eq!(c.sampled_bursts.get(), 0);
        assert!(c.estimated_split().is_none());
    }

    #[test]
    fn estimate_spreads_the_exact_body_in_sampled_proportions() {
        let c = StageCycles::default();
        c.body.add(1000);
        c.sampled[Stage::Emc as usize].add(10);
        c.sampled[Stage::Actions as usize].add(20);
        let est = c.estimated_split().expect("sampled");
        assert_eq!(est[Stage::Emc as usize], 333);
        assert_eq!(
            est[Stage::Actions as usize],
            667,
            "remainder to the largest"
        );
        assert_eq!(est.iter().sum::<u64>(), 1000);
    }
}
