//! `sluice-api`: the contract between `sluiced` and everything that drives
//! it (`sluicectl`, `sluice-agent`, `sluice-cni`, the benches).
//!
//! Every control method `sluiced` serves is a type implementing
//! [`Method`]: its name (and the OVS names it answers to as aliases), its
//! request and reply types (serde), how the request is read from
//! `ovs-appctl`-style string arguments ([`FromArgs`]) and how the reply is
//! rendered as text ([`Render`]). `sluiced` registers each method once and
//! serves it two ways on the same socket:
//!
//! - structured: `params` is the request as a JSON object, `result` the
//!   reply as JSON (what [`client::Client::call`] sends);
//! - text (unixctl): `params` is an array of strings, parsed with
//!   [`FromArgs`], and `result` is [`Render::render`] of the reply, so
//!   `ovs-appctl -t sluiced.ctl dump-flows` prints exactly what
//!   `sluicectl dump-flows` prints.
//!
//! Errors are one type, [`ApiError`]: a machine-readable [`ErrorCode`] and a
//! sentence a user can act on.
//!
//! The crate has no DPDK dependency and no I/O besides [`client`]; it is
//! plain data. Thread-safety: all types are `Send + Sync` values.

pub mod args;
pub mod client;
pub mod conntrack;
pub mod error;
pub mod flows;
pub mod handover;
pub mod node;
pub mod pmd;
pub mod ports;
pub mod service;
pub mod stack;
pub mod system;
pub mod tunnel;

pub use client::{Client, ClientError};
pub use error::{ApiError, ErrorCode};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Default paths of the node's sockets.
pub mod paths {
    /// Where `sluiced` serves its control socket unless told otherwise.
    pub const SLUICED_CTL: &str = "/var/run/sluice/sluiced.ctl";
    /// Where `nestdb-server` serves the node database unless told otherwise.
    pub const NESTDB_SOCK: &str = "/var/run/nestdb/nestdb-server.sock";
    /// `nestdb-server`'s own unixctl socket.
    pub const NESTDB_CTL: &str = "/var/run/nestdb/nestdb-server.ctl";
}

/// One control method: its wire name, the names it also answers to, its
/// request and reply.
pub trait Method {
    /// The method (and unixctl command) name.
    const NAME: &'static str;
    /// Other names it answers to, e.g. OVS's `dpctl/dump-flows`, so that
    /// operators' `ovs-appctl` habits work.
    const ALIASES: &'static [&'static str] = &[];
    /// The arguments of the text form, for `list-commands`.
    const USAGE: &'static str = "";
    /// Fewest and most string arguments of the text form.
    const ARGS: (usize, usize) = (0, 0);
    /// The request.
    type Request: Serialize + DeserializeOwned + FromArgs + Send + 'static;
    /// The reply.
    type Reply: Serialize + DeserializeOwned + Render + Send + 'static;
}

/// Reads a request from `ovs-appctl`-style string arguments (already
/// checked against [`Method::ARGS`]).
pub trait FromArgs: Sized {
    /// Parses the arguments.
    ///
    /// # Errors
    /// [`ApiError`] with [`ErrorCode::InvalidArgument`] naming the bad
    /// argument and what is expected.
    fn from_args(args: &[String]) -> Result<Self, ApiError>;
}

/// Renders a reply as the text `ovs-appctl` and `sluicectl` print.
pub trait Render {
    /// The text, each line ending in a newline (or empty).
    fn render(&self) -> String;
}

/// A request or reply with nothing in it (`{}` on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

impl FromArgs for Empty {
    fn from_args(_: &[String]) -> Result<Self, ApiError> {
        Ok(Empty {})
    }
}

impl Render for Empty {
    fn render(&self) -> String {
        String::new()
    }
}

/// A reply that is a text for people (a trace, a cache description): the
/// text is the reply, carried in a field so that the JSON form stays an
/// object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// The text, lines ending in newlines.
    pub text: String,
}

impl Render for Text {
    fn render(&self) -> String {
        self.text.clone()
    }
}

/// Declares a [`Method`] type.
macro_rules! method {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $usage:literal, ($min:literal, $max:literal), $req:ty => $rep:ty $(, aliases = [$($alias:literal),* $(,)?])?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $ty;
        impl $crate::Method for $ty {
            const NAME: &'static str = $name;
            const ALIASES: &'static [&'static str] = &[$($($alias),*)?];
            const USAGE: &'static str = $usage;
            const ARGS: (usize, usize) = ($min, $max);
            type Request = $req;
            type Reply = $rep;
        }
    };
}
pub(crate) use method;

/// The names of every method this crate defines, with their aliases: what
/// `sluiced` must serve (checked by its tests).
pub fn all_methods() -> Vec<(&'static str, &'static [&'static str])> {
    fn m<M: Method>() -> (&'static str, &'static [&'static str]) {
        (M::NAME, M::ALIASES)
    }
    vec![
        m::<system::Version>(),
        m::<system::ListCommands>(),
        m::<flows::AddFlow>(),
        m::<flows::AddFlows>(),
        m::<flows::ReplaceFlows>(),
        m::<flows::AddGroup>(),
        m::<flows::DelFlows>(),
        m::<flows::ModFlows>(),
        m::<flows::DumpFlows>(),
        m::<flows::DumpGroups>(),
        m::<flows::FlowBundle>(),
        m::<flows::Trace>(),
        m::<pmd::PmdStatsShow>(),
        m::<pmd::PmdStatsClear>(),
        m::<pmd::PmdPerfShow>(),
        m::<pmd::PmdRxqShow>(),
        m::<pmd::DumpCache>(),
        m::<ports::DumpPorts>(),
        m::<ports::PortAdd>(),
        m::<ports::PortDel>(),
        m::<ports::Capture>(),
        m::<ports::CaptureStop>(),
        m::<ports::CaptureStatus>(),
        m::<conntrack::DumpConntrack>(),
        m::<conntrack::FlushConntrack>(),
        m::<conntrack::ConntrackStats>(),
        m::<service::UpdateServices>(),
        m::<service::DumpServices>(),
        m::<service::LbTrace>(),
        m::<tunnel::DumpTunnels>(),
        m::<tunnel::AddVtep>(),
        m::<tunnel::DelVtep>(),
        m::<tunnel::TunnelTrace>(),
        m::<tunnel::TunnelMtu>(),
        m::<tunnel::SetVtep>(),
        m::<stack::DumpNeighbours>(),
        m::<stack::FlushNeighbours>(),
        m::<stack::NeighSet>(),
        m::<stack::NeighDel>(),
        m::<stack::LocalStackShow>(),
        m::<stack::DumpPortSecurity>(),
        m::<stack::SetPortSecurity>(),
        m::<stack::DelPortSecurity>(),
        m::<node::NodeCommit>(),
        m::<node::QueryNodeStatus>(),
        m::<node::QueryNodeProgram>(),
        m::<handover::HandoverPrepare>(),
        m::<handover::HandoverRelease>(),
        m::<handover::HandoverCommit>(),
        m::<handover::QueryRestartReport>(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, aliases) in all_methods() {
            for n in std::iter::once(name).chain(aliases.iter().copied()) {
                assert!(seen.insert(n), "{n} is declared twice");
                assert!(!n.is_empty() && !n.contains(char::is_whitespace), "{n:?}");
            }
        }
    }
}
