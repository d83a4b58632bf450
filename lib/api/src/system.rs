//! The daemon itself: its version and the commands it serves.

use serde::{Deserialize, Serialize};

use crate::{method, Empty, Render};

/// `version` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    /// E.g. `sluiced (Sluice) 0.1.0`.
    pub version: String,
}

impl Render for VersionReply {
    fn render(&self) -> String {
        format!("{}\n", self.version)
    }
}

/// One command in `list-commands`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// Name.
    pub name: String,
    /// Its arguments.
    pub usage: String,
}

/// `list-commands` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandList {
    /// Commands, sorted.
    pub commands: Vec<CommandInfo>,
}

impl Render for CommandList {
    fn render(&self) -> String {
        let mut s = String::from("The available commands are:\n");
        for c in &self.commands {
            s += &format!("  {:<23} {}\n", c.name, c.usage);
        }
        s
    }
}

method!(
    /// The daemon's version.
    Version, "version", "", (0, 0), Empty => VersionReply);
method!(
    /// The commands served.
    ListCommands, "list-commands", "", (0, 0), Empty => CommandList);
