//! Prometheus metrics for Sluice's daemons: [`Exposition`], a writer of the
//! text exposition format (version 0.0.4), and [`MetricsServer`], the HTTP
//! endpoint that serves it (`GET /metrics`).
//!
//! The daemons keep their counters where they already are (atomics read by
//! the control socket's dumps); at each scrape a render function reads them
//! and writes one [`Exposition`]. Nothing is registered up front and no
//! PMD is touched beyond the relaxed loads the dumps already do.
//!
//! The writer checks metric and label names (`[a-zA-Z_:][a-zA-Z0-9_:]*`,
//! labels without `:`), escapes label values and help text as the format
//! says, writes each family's `# HELP` and `# TYPE` once, before its
//! samples, and refuses a family written twice (the format forbids it).
//!
//! Thread-safety: an [`Exposition`] is a plain value; the server runs its
//! own threads (see [`server`]).

pub mod server;

pub use server::{MetricsServer, ServerError};

use std::collections::HashSet;
use std::fmt::Write as _;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic counter (name ends in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets, `_sum` and `_count`.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A programming error in the names given to the writer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// Not a valid metric name.
    #[error("'{0}' is not a valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")]
    MetricName(String),
    /// Not a valid label name.
    #[error(
        "'{0}' is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
    )]
    LabelName(String),
    /// The family was already written.
    #[error("metric family '{0}' is written twice")]
    Duplicate(String),
}

fn valid_metric_name(n: &str) -> bool {
    let mut cs = n.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut cs = n.chars();
    !n.starts_with("__")
        && matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One scrape's text.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    families: HashSet<String>,
    current: Option<(String, Kind)>,
    errors: Vec<MetricsError>,
}

/// A value as the format writes it.
fn fmt_value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts family `name` (its `# HELP` and `# TYPE` lines); the
    /// samples that follow belong to it.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        if !valid_metric_name(name) {
            self.errors.push(MetricsError::MetricName(name.to_string()));
        } else if !self.families.insert(name.to_string()) {
            self.errors.push(MetricsError::Duplicate(name.to_string()));
        }
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        escape_help(help, &mut self.text);
        self.text.push('\n');
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
        self.current = Some((name.to_string(), kind));
        self
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if !valid_label_name(k) {
                    self.errors.push(MetricsError::LabelName(k.to_string()));
                }
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                escape_label(v, &mut self.text);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        fmt_value(value, &mut self.text);
        self.text.push('\n');
    }

    /// A sample of the current counter or gauge family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let name = self
            .current
            .as_ref()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        self.line(&name, labels, value);
        self
    }

    /// A whole histogram of the current family: `buckets` are (upper
    /// bound, cumulative count) in increasing bounds (the `+Inf` bucket is
    /// added from `count`).
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        let name = self
            .current
            .as_ref()
            .map(|c| c.0.clone())
            .unwrap_or_default();
        let bucket = format!("{name}_bucket");
        for &(le, n) in buckets {
            let mut le_s = String::new();
            fmt_value(le, &mut le_s);
            let mut ls: Vec<(&str, &str)> = labels.to_vec();
            ls.push(("le", &le_s));
            self.line(&bucket, &ls, n as f64);
        }
        let mut ls: Vec<(&str, &str)> = labels.to_vec();
        ls.push(("le", "+Inf"));
        self.line(&bucket, &ls, count as f64);
        self.line(&format!("{name}_sum"), labels, sum);
        self.line(&format!("{name}_count"), labels, count as f64);
        self
    }

    /// The text, or the first naming mistake.
    ///
    /// # Errors
    /// [`MetricsError`]: a bad name or a family written twice.
    pub fn finish(self) -> Result<String, MetricsError> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.text),
        }
    }
}

/// A latency histogram with fixed bounds (seconds), cheap to update from
/// one writer thread and read at scrape time.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<std::sync::atomic::AtomicU64>,
    sum_micros: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

impl Histogram {
    /// Buckets at `bounds` (seconds, increasing).
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: bounds.iter().map(|_| Default::default()).collect(),
            sum_micros: Default::default(),
            count: Default::default(),
        }
    }

    /// Records one observation of `secs` seconds.
    pub fn observe(&self, secs: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_micros
            .fetch_add((secs.max(0.0) * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Writes it as the current family of `e`.
    pub fn write(&self, e: &mut Exposition, labels: &[(&str, &str)]) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut cum = 0;
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&b, c)| {
                cum += c.load(Relaxed);
                (b, cum)
            })
            .collect();
        let count = self.count.load(Relaxed).max(cum);
        e.histogram(
            labels,
            &buckets,
            self.sum_micros.load(Relaxed) as f64 / 1e6,
            count,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escapes() {
        let mut e = Exposition::new();
        e.family(
            "sluice_port_rx_packets_total",
            Kind::Counter,
            "Packets received.\nBy port \\ name.",
        )
        .sample(&[("port", "pod \"a\"\n"), ("ofport", "3")], 12.0)
        .sample(&[("port", "b\\c"), ("ofport", "4")], 0.5);
        e.family("sluice_up", Kind::Gauge, "Up.").sample(&[], 1.0);
        let t = e.finish().expect("valid");
        assert_eq!(
            t,
            "# HELP sluice_port_rx_packets_total Packets received.\\nBy port \\\\ name.\n# TYPE sluice_port_rx_packets_total counter\nsluice_port_rx_packets_total{port=\"pod \\\"a\\\"\\n\",ofport=\"3\"} 12\nsluice_port_rx_packets_total{port=\"b\\\\c\",ofport=\"4\"} 0.5\n# HELP sluice_up Up.\n# TYPE sluice_up gauge\nsluice_up 1\n"
        );
    }

    #[test]
    fn bad_names_and_twice_written_families_are_refused() {
        let mut e = Exposition::new();
        e.family("9bad", Kind::Gauge, "x").sample(&[], 1.0);
        assert!(matches!(e.finish(), Err(MetricsError::MetricName(_))));
        let mut e = Exposition::new();
        e.family("ok", Kind::Gauge, "x")
            .sample(&[("a:b", "v")], 1.0);
        assert!(matches!(e.finish(), Err(MetricsError::LabelName(_))));
        let mut e = Exposition::new();
        e.family("ok", Kind::Gauge, "x");
        e.family("ok", Kind::Gauge, "x");
        assert_eq!(e.finish(), Err(MetricsError::Duplicate("ok".into())));
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        for s in [0.0005, 0.005, 0.005, 0.05, 3.0] {
            h.observe(s);
        }
        let mut e = Exposition::new();
        e.family("sync_seconds", Kind::Histogram, "Sync latency.");
        h.write(&mut e, &[]);
        let t = e.finish().expect("valid");
        assert!(t.contains("sync_seconds_bucket{le=\"0.001\"} 1\n"), "{t}");
        assert!(t.contains("sync_seconds_bucket{le=\"0.01\"} 3\n"), "{t}");
        assert!(t.contains("sync_seconds_bucket{le=\"0.1\"} 4\n"), "{t}");
        assert!(t.contains("sync_seconds_bucket{le=\"+Inf\"} 5\n"), "{t}");
        assert!(t.contains("sync_seconds_count 5\n"), "{t}");
        assert!(t.contains("sync_seconds_sum 3.0605"), "{t}");
    }
}
