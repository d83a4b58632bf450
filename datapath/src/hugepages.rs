//! The hugepage policy of the DPDK memory: [`HugepageMode`].
//!
//! What it owns: the three policies (`auto`, `required`, `never`) and their
//! parsing, shared by the configuration (`[datapath] hugepages`, `sluiced
//! --hugepages`), which chooses one, and the EAL (`dpdk::eal`), which
//! applies it. It depends on nothing else in the crate, so the
//! configuration does not need the DPDK glue to name a policy.
//!
//! Thread-safety: plain data.

/// Whether to use hugepages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugepageMode {
    /// Use hugepages when available, else `--no-huge`.
    #[default]
    Auto,
    /// Refuse to start without free hugepages.
    Required,
    /// Never use hugepages (`--no-huge`).
    Never,
}

impl HugepageMode {
    /// The policy's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            HugepageMode::Auto => "auto",
            HugepageMode::Required => "required",
            HugepageMode::Never => "never",
        }
    }
}

/// Compares with the policy's name in the configuration (`"auto"`, ...).
impl PartialEq<&str> for HugepageMode {
    fn eq(&self, name: &&str) -> bool {
        self.name() == *name
    }
}

impl std::str::FromStr for HugepageMode {
    /// A sentence naming the accepted words. (A `String`, not a typed
    /// error, because `memif-gen` in the benches crate forwards it as one.)
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(HugepageMode::Auto),
            "required" | "yes" | "true" => Ok(HugepageMode::Required),
            "never" | "no" | "false" => Ok(HugepageMode::Never),
            _ => Err(format!(
                "invalid hugepages mode '{s}' (expected auto, required or never)"
            )),
        }
    }
}
