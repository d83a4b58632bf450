//! `sluiced` configuration: an ncp.ini-style INI file.
//!
//! ```ini
//! [coe]
//! node_type = 'BAREMETAL'          ; sluiced refuses anything else
//!
//! [nsx_node_agent]
//! ovs_bridge = br-int              ; the bridge name shown by dump-ports
//! ovs_uplink_port = uplink         ; must name a [port:...] section
//!
//! [datapath]
//! cores = 1                        ; PMD cores: "1", "1,3", "2-5"
//! main_core = 0                    ; EAL main thread / control threads
//! file_prefix = sluice             ; one DPDK process per prefix
//! hugepages = auto                 ; auto | required | never
//! no_huge_memory_mb = 512
//! eal_args = --log-level=lib.eal:debug
//! mbufs = 16384
//! pipeline = flow                ; flow (flow tables, default) or l2
//! ctl_socket = /var/run/sluice/sluiced.ctl
//! metrics_address = 0.0.0.0:9476  ; Prometheus /metrics (off when absent)
//! state_file = /var/run/sluice/conntrack.state ; connections saved for a restart
//! state_interval_ms = 1000         ; how often state_file is rewritten
//! mac_table_size = 8192
//! mac_aging_s = 300
//! emc_insert_inv_prob = 100        ; EMC insert 1 in N misses; 1 always, 0 off
//! direct_path = true               ; specialised tables skip the caches (classifier::direct)
//!
//! [port:uplink]
//! devargs = net_af_packet0,iface=eth1
//! ofport = 1                       ; OpenFlow port number (default: order)
//! rx_queues = 1
//! ```
//!
//! Only our own sections are checked strictly: an unknown key in
//! `[datapath]` or a `[port:NAME]` section is an error with a suggestion,
//! and so is a section whose name is a near miss of ours (`[datapth]`).
//! Other sections and keys of a shared ncp.ini are ignored. Values may be
//! quoted with `'` or `"` as in ncp.ini.

use std::collections::BTreeSet;
use std::path::Path;

use thiserror::Error;

pub use crate::hugepages::HugepageMode;

/// Everything `sluiced` needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[coe] node_type`.
    pub node_type: String,
    /// `[nsx_node_agent] ovs_bridge`.
    pub bridge: String,
    /// `[nsx_node_agent] ovs_uplink_port`.
    pub uplink_port: Option<String>,
    /// `[datapath]`.
    pub datapath: DatapathConfig,
    /// `[port:NAME]` sections, in file order.
    pub ports: Vec<PortConfig>,
}

/// The `[datapath]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DatapathConfig {
    /// CPUs that run PMD threads.
    pub cores: Vec<usize>,
    /// CPU of the EAL main thread.
    pub main_core: usize,
    /// DPDK `--file-prefix`.
    pub file_prefix: String,
    /// Hugepage policy (`auto`, `required` or `never`).
    pub hugepages: HugepageMode,
    /// `-m` when running without hugepages.
    pub no_huge_memory_mb: u32,
    /// Extra EAL arguments (whitespace-separated).
    pub eal_args: Vec<String>,
    /// mbufs in the pool.
    pub mbufs: u32,
    /// Pipeline kind (`flow` or `l2`).
    pub pipeline: PipelineKind,
    /// Control socket path.
    pub ctl_socket: String,
    /// Where `/metrics` is served (None: no metrics endpoint).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Where the connections are saved for the next sluiced (None: not
    /// saved; a restart starts with an empty table).
    pub state_file: Option<String>,
    /// How often `state_file` is rewritten, ms.
    pub state_interval_ms: u64,
    /// MAC table entries (one table shared by every PMD).
    pub mac_table_size: usize,
    /// MAC aging in seconds.
    pub mac_aging_s: u64,
    /// Exact-match cache insertion: a classifier miss caches its key with
    /// probability 1 / N (OVS `emc-insert-inv-prob`); 1 = always, 0 = the
    /// EMC is off. See `classifier::emc`.
    pub emc_insert_inv_prob: u32,
    /// Packets of programs whose tables are specialised skip the EMC and
    /// megaflow cache (`classifier::direct`); default on.
    pub direct_path: bool,
    /// Overlay keys (`vtep_ip`, `vtep_gateway`, `uplink_mtu`, `tunnel_*`,
    /// `arp_gateways`, `proxy_arp`), see `stack::overlay`.
    pub overlay: crate::stack::overlay::OverlayConfig,
    /// Conntrack and Service keys (`conntrack_*`, `service_*`), see
    /// `conntrack::config`.
    pub stateful: crate::conntrack::config::StatefulConfig,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            cores: vec![1],
            main_core: 0,
            file_prefix: "sluice".into(),
            hugepages: HugepageMode::Auto,
            no_huge_memory_mb: 512,
            eal_args: Vec::new(),
            mbufs: 16384,
            pipeline: PipelineKind::Flow,
            ctl_socket: "/var/run/sluice/sluiced.ctl".into(),
            metrics_address: None,
            state_file: None,
            state_interval_ms: 1000,
            mac_table_size: crate::pipeline::l2::DEFAULT_MAC_CAPACITY,
            mac_aging_s: 300,
            emc_insert_inv_prob: crate::classifier::emc::EMC_INSERT_INV_PROB,
            direct_path: true,
            overlay: crate::stack::overlay::OverlayConfig::default(),
            stateful: Default::default(),
        }
    }
}

/// Which pipeline the PMDs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PipelineKind {
    /// The flow tables, starting with one `normal` flow, with the
    /// conntrack, Service and overlay features.
    #[default]
    Flow,
    /// The plain learning switch.
    L2,
}

impl PipelineKind {
    /// The kind's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            PipelineKind::Flow => "flow",
            PipelineKind::L2 => "l2",
        }
    }
}

/// The configuration does not fit this machine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostCheckError {
    /// `[coe] node_type` is not bare metal.
    #[error("node_type is '{0}': sluiced replaces kernel Open vSwitch only on BAREMETAL nodes ([coe] node_type = BAREMETAL)")]
    NotBaremetal(String),
    /// A configured core is not usable.
    #[error(
        "core {core} does not exist or is not allowed for this process (usable cores: {usable})"
    )]
    NoSuchCore {
        /// The configured core.
        core: usize,
        /// The usable cores, as a list or range.
        usable: String,
    },
}

/// Compares with the kind's name in the configuration (`"flow"`, `"l2"`).
impl PartialEq<&str> for PipelineKind {
    fn eq(&self, name: &&str) -> bool {
        self.name() == *name
    }
}

/// One `[port:NAME]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct PortConfig {
    /// The NAME of the section.
    pub name: String,
    /// DPDK devargs.
    pub devargs: String,
    /// OpenFlow port number.
    pub ofport: u16,
    /// rx queues.
    pub rx_queues: u16,
}

/// A configuration error: always names the file, section and key.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {reason}")]
    Read {
        /// Path.
        path: String,
        /// OS error.
        reason: String,
    },
    /// The INI syntax is broken.
    #[error("config {path}: {reason}")]
    Syntax {
        /// Path.
        path: String,
        /// Parser message.
        reason: String,
    },
    /// A semantic error in one key.
    #[error("config {path}: [{section}] {key}: {reason}")]
    Key {
        /// Path.
        path: String,
        /// Section.
        section: String,
        /// Key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A structural error.
    #[error("config {path}: {reason}")]
    Invalid {
        /// Path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// One rule for repeats: a section or a key given twice is an error that
/// names both lines (the INI parser would silently keep the first section
/// and the last value). Comments (`;`, `#`) and blank lines are skipped;
/// keys before any section belong to the unnamed section.
fn check_duplicates(text: &str, path: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        path: path.into(),
        reason,
    };
    let mut sections: Vec<(&str, usize)> = Vec::new();
    let mut keys: Vec<(&str, usize)> = Vec::new();
    let mut section = "";
    for (i, line) in text.lines().enumerate() {
        let (n, line) = (i + 1, line.trim());
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            let name = name.trim();
            if let Some(&(_, first)) = sections.iter().find(|(s, _)| *s == name) {
                return Err(invalid(format!(
                    "section [{name}] appears twice (lines {first} and {n}); merge them into one"
                )));
            }
            sections.push((name, n));
            section = name;
            keys.clear();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if let Some(&(_, first)) = keys.iter().find(|(k, _)| *k == key) {
                let at = if section.is_empty() {
                    String::new()
                } else {
                    format!(" in [{section}]")
                };
                return Err(invalid(format!(
                    "{key} is given twice{at} (lines {first} and {n}); keep one"
                )));
            }
            keys.push((key, n));
        }
    }
    Ok(())
}

const DATAPATH_KEYS: &[&str] = &[
    "cores",
    "main_core",
    "file_prefix",
    "hugepages",
    "no_huge_memory_mb",
    "eal_args",
    "mbufs",
    "pipeline",
    "ctl_socket",
    "metrics_address",
    "state_file",
    "state_interval_ms",
    "mac_table_size",
    "mac_aging_s",
    "emc_insert_inv_prob",
    "direct_path",
];
const PORT_KEYS: &[&str] = &["devargs", "ofport", "rx_queues"];
const OUR_SECTIONS: &[&str] = &["coe", "nsx_node_agent", "datapath", "port"];

/// Levenshtein distance, for "did you mean" suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = Vec::with_capacity(b.len() + 1);
    for (i, ca) in a.chars().enumerate() {
        cur.clear();
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The furthest a suggestion may be from the word (edits).
const SUGGEST_WITHIN: usize = 3;

/// " (did you mean 'X'?)" for the nearest candidate within
/// [`SUGGEST_WITHIN`] edits, else nothing. Candidates whose length differs
/// by more than that are skipped without computing the distance (it is at
/// least the difference), so a long bad key costs no more than a short one.
fn suggest(word: &str, candidates: &[&str]) -> String {
    let n = word.chars().count();
    candidates
        .iter()
        .filter(|c| c.chars().count().abs_diff(n) <= SUGGEST_WITHIN)
        .map(|c| (distance(word, c), *c))
        .filter(|&(d, _)| d <= SUGGEST_WITHIN)
        .min()
        .map(|(_, c)| format!(" (did you mean '{c}'?)"))
        .unwrap_or_default()
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['\'', '"'] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// What is wrong with a CPU list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CpuListError {
    /// An item is not a number.
    #[error("'{0}' is not a CPU number")]
    NotANumber(String),
    /// A range `A-B` with A > B.
    #[error("range '{0}' is backwards")]
    Backwards(String),
    /// A range of more than 4096 CPUs.
    #[error("range '{0}' is too large")]
    TooLarge(String),
    /// No CPU at all.
    #[error("the list is empty")]
    Empty,
}

/// Parses a CPU list such as `1`, `1,3` or `2-5,7`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, CpuListError> {
    let mut cpus = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| CpuListError::NotANumber(t.to_string()))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(CpuListError::Backwards(part.to_string()));
                }
                if b - a > 4096 {
                    return Err(CpuListError::TooLarge(part.to_string()));
                }
                cpus.extend(a..=b);
            }
            None => {
                cpus.insert(num(part)?);
            }
        }
    }
    if cpus.is_empty() {
        return Err(CpuListError::Empty);
    }
    Ok(cpus.into_iter().collect())
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `path` is used in messages.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        check_duplicates(text, path)?;
        let ini = ini::Ini::load_from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let key_err = |section: &str, key: &str, reason: String| ConfigError::Key {
            path: path.into(),
            section: section.into(),
            key: key.into(),
            reason,
        };
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.into(),
            reason,
        };

        // Near misses of our section names are typos, not foreign sections.
        for (name, _) in ini.iter() {
            let Some(name) = name else { continue };
            let base = name.split(':').next().unwrap_or(name);
            if OUR_SECTIONS.contains(&base) {
                continue;
            }
            let hint = suggest(base, OUR_SECTIONS);
            if !hint.is_empty() && distance(base, "port") < base.len() {
                return Err(invalid(format!("unknown section [{name}]{hint}")));
            }
        }

        let get = |section: &str, key: &str| -> Option<String> {
            ini.section(Some(section))
                .and_then(|s| s.get(key))
                .map(|v| unquote(v).to_string())
        };
        let node_type = get("coe", "node_type").ok_or_else(|| {
            key_err(
                "coe",
                "node_type",
                "missing (sluiced runs only where node_type = BAREMETAL)".into(),
            )
        })?;
        let bridge = get("nsx_node_agent", "ovs_bridge").unwrap_or_else(|| "br-int".into());
        let uplink_port = get("nsx_node_agent", "ovs_uplink_port").filter(|s| !s.is_empty());

        let mut dp = DatapathConfig::default();
        if let Some(sec) = ini.section(Some("datapath")) {
            for (k, v) in sec.iter() {
                let v = unquote(v);
                let parse_num = |what: &str| -> Result<u64, ConfigError> {
                    v.parse::<u64>()
                        .map_err(|_| key_err("datapath", k, format!("'{v}' is not {what}")))
                };
                match k {
                    "cores" => {
                        dp.cores = parse_cpu_list(v).map_err(|e| key_err("datapath", k, e.to_string()))?
                    }
                    "main_core" => dp.main_core = parse_num("a CPU number")? as usize,
                    "file_prefix" => {
                        if v.is_empty() || v.contains('/') || v.contains(char::is_whitespace) {
                            return Err(key_err(
                                "datapath",
                                k,
                                format!("'{v}' is not a valid prefix (no '/', no spaces)"),
                            ));
                        }
                        dp.file_prefix = v.into()
                    }
                    "hugepages" => {
                        dp.hugepages = match v {
                            "auto" => HugepageMode::Auto,
                            "required" => HugepageMode::Required,
                            "never" => HugepageMode::Never,
                            _ => {
                                return Err(key_err(
                                    "datapath",
                                    k,
                                    format!("'{v}' is not one of auto, required, never"),
                                ))
                            }
                        }
                    }
                    "no_huge_memory_mb" => {
                        let n = parse_num("a size in MiB")?;
                        if !(64..=65536).contains(&n) {
                            return Err(key_err(
                                "datapath",
                                k,
                                format!("{n} is outside 64..65536"),
                            ));
                        }
                        dp.no_huge_memory_mb = n as u32
                    }
                    "eal_args" => dp.eal_args = v.split_whitespace().map(String::from).collect(),
                    "mbufs" => {
                        let n = parse_num("a number of buffers")?;
                        if !(1024..=4_000_000).contains(&n) {
                            return Err(key_err(
                                "datapath",
                                k,
                                format!("{n} is outside 1024..4000000"),
                            ));
                        }
                        dp.mbufs = n as u32
                    }
                    "pipeline" => {
                        dp.pipeline = match v {
                            "flow" => PipelineKind::Flow,
                            "l2" => PipelineKind::L2,
                            _ => {
                                return Err(key_err(
                                    "datapath",
                                    k,
                                    format!("'{v}' is not a pipeline (expected l2 or flow)"),
                                ))
                            }
                        }
                    }
                    "ctl_socket" => dp.ctl_socket = v.into(),
                    "state_file" => dp.state_file = Some(v.into()),
                    "state_interval_ms" => {
                        dp.state_interval_ms = parse_num("a number of milliseconds")?.max(10)
                    }
                    "metrics_address" => {
                        dp.metrics_address = Some(v.parse().map_err(|_| {
                            key_err(
                                "datapath",
                                k,
                                format!("'{v}' is not an address and port (e.g. 0.0.0.0:9476 or 127.0.0.1:9476)"),
                            )
                        })?)
                    }
                    "mac_table_size" => {
                        dp.mac_table_size = parse_num("a number of entries")? as usize
                    }
                    "mac_aging_s" => dp.mac_aging_s = parse_num("a number of seconds")?,
                    "emc_insert_inv_prob" => {
                        dp.emc_insert_inv_prob = v.parse::<u32>().map_err(|_| {
                            key_err(
                                "datapath",
                                k,
                                format!(
                                    "'{v}' is not an inverse probability (0..{}: 1 = insert on every miss, N = on 1 in N, 0 = EMC off)",
                                    u32::MAX
                                ),
                            )
                        })?
                    }
                    "direct_path" => {
                        dp.direct_path = match v {
                            "true" | "yes" | "on" | "1" => true,
                            "false" | "no" | "off" | "0" => false,
                            _ => {
                                return Err(key_err(
                                    "datapath",
                                    k,
                                    format!("'{v}' is not true or false"),
                                ))
                            }
                        }
                    }
                    k if crate::stack::overlay::OVERLAY_KEYS.contains(&k) => {
                        dp.overlay
                            .set(k, v)
                            .map_err(|e| key_err("datapath", k, e.to_string()))?
                    }
                    k if crate::conntrack::config::STATEFUL_KEYS.contains(&k) => dp
                        .stateful
                        .set(k, v)
                        .map_err(|e| key_err("datapath", k, e.to_string()))?,
                    other => {
                        return Err(key_err(
                            "datapath",
                            other,
                            format!("unknown key{}", suggest(other, DATAPATH_KEYS)),
                        ))
                    }
                }
            }
        }

        let mut ports: Vec<PortConfig> = Vec::new();
        for (name, sec) in ini.iter() {
            let Some(section) = name else { continue };
            let Some(pname) = section.strip_prefix("port:") else {
                continue;
            };
            let pname = pname.trim();
            if pname.is_empty() {
                return Err(invalid("a [port:NAME] section has an empty NAME".into()));
            }
            let mut devargs = None;
            let mut ofport = None;
            let mut rx_queues = 1u16;
            for (k, v) in sec.iter() {
                let v = unquote(v);
                match k {
                    "devargs" => devargs = Some(v.to_string()),
                    "ofport" => {
                        let n = v
                            .parse::<u16>()
                            .ok()
                            .filter(|&n| n < 0xff00)
                            .ok_or_else(|| {
                                key_err(
                                    section,
                                    k,
                                    format!("'{v}' is not a port number (0..65279)"),
                                )
                            })?;
                        ofport = Some(n)
                    }
                    "rx_queues" => {
                        rx_queues = v
                            .parse::<u16>()
                            .ok()
                            .filter(|&n| (1..=64).contains(&n))
                            .ok_or_else(|| {
                                key_err(section, k, format!("'{v}' is not a queue count (1..64)"))
                            })?
                    }
                    other => {
                        return Err(key_err(
                            section,
                            other,
                            format!("unknown key{}", suggest(other, PORT_KEYS)),
                        ))
                    }
                }
            }
            let devargs = devargs
                .filter(|d| !d.is_empty())
                .ok_or_else(|| key_err(section, "devargs", "missing".into()))?;
            if ports.iter().any(|p| p.name == pname) {
                return Err(invalid(format!("port '{pname}' is defined twice")));
            }
            ports.push(PortConfig {
                name: pname.to_string(),
                devargs,
                ofport: ofport.unwrap_or(u16::MAX),
                rx_queues,
            });
        }
        // Ports without an explicit ofport take the lowest free number from 1.
        let mut next = 1u16;
        for i in 0..ports.len() {
            if ports[i].ofport != u16::MAX {
                continue;
            }
            while ports.iter().any(|p| p.ofport == next) {
                next += 1;
            }
            ports[i].ofport = next;
        }
        // Port numbers index the per-PMD tx staging: keep them dense-ish.
        let mut seen = BTreeSet::new();
        for p in &ports {
            if !seen.insert(p.ofport) {
                return Err(invalid(format!(
                    "ofport {} is used by more than one port (port '{}')",
                    p.ofport, p.name
                )));
            }
            if p.ofport >= 1024 {
                return Err(invalid(format!(
                    "port '{}': ofport {} is too large (ports are numbered below 1024)",
                    p.name, p.ofport
                )));
            }
        }
        if let Some(up) = &uplink_port {
            if !ports.is_empty() && !ports.iter().any(|p| &p.name == up) {
                return Err(key_err(
                    "nsx_node_agent",
                    "ovs_uplink_port",
                    format!("'{up}' names no [port:{up}] section"),
                ));
            }
        }
        if dp.cores.contains(&dp.main_core) && dp.cores.len() > 1 {
            return Err(key_err(
                "datapath",
                "main_core",
                format!(
                    "core {} is also a PMD core; choose a core outside 'cores'",
                    dp.main_core
                ),
            ));
        }
        Ok(Config {
            node_type,
            bridge,
            uplink_port,
            datapath: dp,
            ports,
        })
    }

    /// Refuses to run on a node that is not bare metal.
    pub fn check_node_type(&self) -> Result<(), HostCheckError> {
        if self.node_type.eq_ignore_ascii_case("BAREMETAL") {
            Ok(())
        } else {
            Err(HostCheckError::NotBaremetal(self.node_type.clone()))
        }
    }

    /// Checks that every configured core exists on this machine.
    pub fn check_cores(&self, available: &[usize]) -> Result<(), HostCheckError> {
        let describe = || {
            let mut v = available.to_vec();
            v.sort_unstable();
            match (v.first(), v.last()) {
                (Some(a), Some(b)) if b - a + 1 == v.len() => format!("{a}-{b}"),
                _ => v
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            }
        };
        for &c in self.datapath.cores.iter().chain([&self.datapath.main_core]) {
            if !available.contains(&c) {
                return Err(HostCheckError::NoSuchCore {
                    core: c,
                    usable: describe(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Skipping candidates by length never changes the suggestion: the
        /// distance is at least the length difference.
        #[test]
        fn suggest_skips_only_candidates_out_of_reach(
            word in "[a-z_]{0,14}",
            cands in proptest::collection::vec("[a-z_]{0,12}", 0..8),
        ) {
            let refs: Vec<&str> = cands.iter().map(String::as_str).collect();
            let full = refs
                .iter()
                .map(|c| (distance(&word, c), *c))
                .filter(|&(d, _)| d <= SUGGEST_WITHIN)
                .min()
                .map(|(_, c)| format!(" (did you mean '{c}'?)"))
                .unwrap_or_default();
            proptest::prop_assert_eq!(suggest(&word, &refs), full);
        }
    }

    #[test]
    fn suggest_names_the_nearest_key() {
        assert_eq!(
            suggest("ovs_brige", &["ovs_bridge", "ovs_uplink_port"]),
            " (did you mean 'ovs_bridge'?)"
        );
        assert_eq!(suggest(&"x".repeat(4000), &["ovs_bridge"]), "");
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    const GOOD: &str = "
[coe]
node_type = 'BAREMETAL'
cluster = k8s

[nsx_node_agent]
ovs_bridge = br-int
ovs_uplink_port = uplink

[nsx_v3]
whatever = 1

[datapath]
cores = 1
file_prefix = t
hugepages = never
eal_args = --log-level=8 --no-pci

[port:uplink]
devargs = net_ring0
ofport = 1

[port:pod1]
devargs = net_tap0,iface=p1
";

    #[test]
    fn parses_ncp_style_file() {
        let c = Config::parse(GOOD, "x.ini").unwrap();
        assert_eq!(c.node_type, "BAREMETAL");
        assert_eq!(c.bridge, "br-int");
        assert_eq!(c.uplink_port.as_deref(), Some("uplink"));
        assert_eq!(c.datapath.cores, vec![1]);
        assert_eq!(c.datapath.eal_args, vec!["--log-level=8", "--no-pci"]);
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].ofport, 1);
        assert_eq!(c.ports[1].ofport, 2, "lowest free port number from 1");
        c.check_node_type().unwrap();
    }

    #[test]
    fn repeated_sections_and_keys_are_refused_with_their_lines() {
        let base = "[coe]\nnode_type = BAREMETAL\n[datapath]\ncores = 1\n";
        let e = Config::parse(&format!("{base}[datapath]\ncores = 99\n"), "x.ini")
            .expect_err("second [datapath]");
        assert_eq!(
            e.to_string(),
            "config x.ini: section [datapath] appears twice (lines 3 and 5); merge them into one"
        );
        let e = Config::parse(&format!("{base}; a comment\ncores = 2\n"), "x.ini")
            .expect_err("cores twice");
        assert_eq!(
            e.to_string(),
            "config x.ini: cores is given twice in [datapath] (lines 4 and 6); keep one"
        );
        let e = Config::parse(
            &format!("{base}[port:p]\ndevargs = net_null0\n[port:p]\ndevargs = net_null1\n"),
            "x.ini",
        )
        .expect_err("port twice");
        assert!(
            e.to_string()
                .contains("section [port:p] appears twice (lines 5 and 7)"),
            "{e}"
        );
        // The same key in two sections is fine.
        Config::parse(
            &format!("{base}[port:a]\ndevargs = net_null0\nofport = 1\n[port:b]\ndevargs = net_null1\nofport = 2\n"),
            "x.ini",
        )
        .expect("distinct sections");
    }

    #[test]
    fn duplicate_ofport_is_reported() {
        let text = GOOD.replace(
            "devargs = net_tap0,iface=p1",
            "devargs = net_tap0,iface=p1\nofport = 1",
        );
        let e = Config::parse(&text, "x.ini").unwrap_err().to_string();
        assert_eq!(
            e,
            "config x.ini: ofport 1 is used by more than one port (port 'pod1')"
        );
    }

    #[test]
    fn typo_in_datapath_key_suggests_the_right_one() {
        let text = GOOD.replace("cores = 1", "coers = 1");
        let e = Config::parse(&text, "x.ini").unwrap_err().to_string();
        assert_eq!(
            e,
            "config x.ini: [datapath] coers: unknown key (did you mean 'cores'?)"
        );
    }

    #[test]
    fn typo_in_section_name_is_an_error() {
        let text = GOOD.replace("[datapath]", "[datapth]");
        let e = Config::parse(&text, "x.ini").unwrap_err().to_string();
        assert_eq!(
            e,
            "config x.ini: unknown section [datapth] (did you mean 'datapath'?)"
        );
    }

    #[test]
    fn non_baremetal_is_refused() {
        let text = GOOD.replace("'BAREMETAL'", "'HOSTVM'");
        let c = Config::parse(&text, "x.ini").unwrap();
        let e = c.check_node_type().unwrap_err();
        assert!(e.to_string().starts_with("node_type is 'HOSTVM'"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (from, to, want) in [
            (
                "cores = 1",
                "cores = 3-1",
                "[datapath] cores: range '3-1' is backwards",
            ),
            (
                "cores = 1",
                "cores = x",
                "[datapath] cores: 'x' is not a CPU number",
            ),
            (
                "hugepages = never",
                "hugepages = maybe",
                "[datapath] hugepages: 'maybe' is not one of auto, required, never",
            ),
            (
                "ofport = 1",
                "ofport = 70000",
                "[port:uplink] ofport: '70000' is not a port number (0..65279)",
            ),
            (
                "devargs = net_ring0",
                "devarg = net_ring0",
                "[port:uplink] devarg: unknown key (did you mean 'devargs'?)",
            ),
        ] {
            let text = GOOD.replace(from, to);
            let e = Config::parse(&text, "x.ini").unwrap_err().to_string();
            assert_eq!(e, format!("config x.ini: {want}"));
        }
    }

    #[test]
    fn direct_path() {
        let c = Config::parse(GOOD, "x.ini").unwrap();
        assert!(c.datapath.direct_path, "on by default");
        for (v, want) in [
            ("false", false),
            ("off", false),
            ("true", true),
            ("1", true),
        ] {
            let text = GOOD.replace("cores = 1", &format!("cores = 1\ndirect_path = {v}"));
            let c = Config::parse(&text, "x.ini").unwrap();
            assert_eq!(c.datapath.direct_path, want, "{v}");
        }
        let text = GOOD.replace("cores = 1", "cores = 1\ndirect_path = maybe");
        let e = Config::parse(&text, "x.ini").unwrap_err().to_string();
        assert_eq!(
            e,
            "config x.ini: [datapath] direct_path: 'maybe' is not true or false"
        );
    }

    #[test]
    fn emc_insert_inv_prob() {
        let c = Config::parse(GOOD, "x.ini").unwrap();
        assert_eq!(c.datapath.emc_insert_inv_prob, 100, "OVS's default");
        for (v, want) in [("1", 1), ("0", 0), ("'250'", 250), ("4294967295", u32::MAX)] {
            let text = GOOD.replace(
                "cores = 1",
                &format!("cores = 1\nemc_insert_inv_prob = {v}"),
            );
            let c = Config::parse(&text, "x.ini").unwrap();
            assert_eq!(c.datapath.emc_insert_inv_prob, want, "{v}");
        }
        for v in ["-1", "0.5", "4294967296", "often", ""] {
            let text = GOOD.replace(
                "cores = 1",
                &format!("cores = 1\nemc_insert_inv_prob = {v}"),
            );
            let e = Config::parse(&text, "x.ini").unwrap_err().to_string();
            assert_eq!(
                e,
                format!("config x.ini: [datapath] emc_insert_inv_prob: '{v}' is not an inverse probability (0..4294967295: 1 = insert on every miss, N = on 1 in N, 0 = EMC off)")
            );
        }
        let text = GOOD.replace("cores = 1", "cores = 1\nemc_insert_inv_prb = 5");
        let e = Config::parse(&text, "x.ini").unwrap_err().to_string();
        assert!(
            e.ends_with("unknown key (did you mean 'emc_insert_inv_prob'?)"),
            "{e}"
        );
    }

    #[test]
    fn uplink_must_name_a_port() {
        let text = GOOD.replace("ovs_uplink_port = uplink", "ovs_uplink_port = eth9");
        let e = Config::parse(&text, "x.ini").unwrap_err().to_string();
        assert_eq!(
            e,
            "config x.ini: [nsx_node_agent] ovs_uplink_port: 'eth9' names no [port:eth9] section"
        );
    }

    #[test]
    fn cores_are_checked_against_the_machine() {
        let c = Config::parse(GOOD, "x.ini").unwrap();
        c.check_cores(&[0, 1]).unwrap();
        let e = Config::parse(&GOOD.replace("cores = 1", "cores = 7"), "x.ini")
            .unwrap()
            .check_cores(&[0, 1])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "core 7 does not exist or is not allowed for this process (usable cores: 0-1)"
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1,3-5, 7").unwrap(), vec![1, 3, 4, 5, 7]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("0-99999").is_err());
    }

    #[test]
    fn broken_ini_is_a_syntax_error() {
        let e = Config::parse("[coe\nnode_type=x", "x.ini").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    }
}
