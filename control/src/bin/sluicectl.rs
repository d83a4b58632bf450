//! `sluicectl`: command-line client of the `sluiced` control socket.
//!
//! Every subcommand sends one unixctl command with string arguments, so
//! `sluicectl X ARGS` is the same request as `ovs-appctl -t SOCK X ARGS`
//! (the names are listed in the datapath's `ctl` module documentation).
//! `add-flows` and `replace-flows` read a flow file locally and send it as
//! one atomic `flow-bundle`. `--format json` asks the server for structured
//! output (falling back to the command's text as a JSON string).
//!
//! Exit status: 0 on success, 1 if `sluiced` answered with an error (printed
//! to stderr as one line), 2 if it could not be asked (cannot connect, usage
//! error, unreadable input file, broken connection).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use sluice_control::ctl_client::{io_error_text, ClientError, CtlClient, DEFAULT_SOCKET};

#[derive(Debug, Parser)]
#[command(
    name = "sluicectl",
    version,
    about = "Query and control the sluiced datapath through its control socket"
)]
struct Cli {
    /// Control socket of sluiced.
    #[arg(long, global = true, env = "SLUICE_CTL", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Give up waiting for a reply after SECS seconds (0: wait forever).
    #[arg(long, global = true, default_value_t = 0.0, value_name = "SECS")]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The server's text, exactly as ovs-appctl prints it.
    Text,
    /// JSON: the feature's structured output, or its text as a JSON string.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the commands the server supports.
    ListCommands,
    /// Print the server's version.
    Version,
    /// Add one flow (ovs-ofctl syntax).
    AddFlow {
        /// The flow, e.g. "table=0,priority=10,ip,actions=output:2".
        flow: String,
    },
    /// Add every flow in FILE (one per line, '#' comments) as one atomic bundle.
    AddFlows {
        /// The flow file, or "-" for standard input.
        file: PathBuf,
    },
    /// Delete the flows matching MATCH (all flows if omitted).
    DelFlows {
        /// Match priority and fields exactly instead of as a wildcard.
        #[arg(long)]
        strict: bool,
        /// The match, e.g. "table=0,ip,nw_dst=10.0.0.1".
        #[arg(value_name = "MATCH")]
        match_: Option<String>,
    },
    /// Change the actions of the flows matching FLOW.
    ModFlows {
        /// Match priority and fields exactly instead of as a wildcard.
        #[arg(long)]
        strict: bool,
        /// The flow with its new actions.
        flow: String,
    },
    /// Print flows, optionally of one table and/or matching MATCH.
    DumpFlows {
        /// "table=N" and/or a match.
        #[arg(num_args = 0..=2, value_name = "[table=N] [MATCH]")]
        spec: Vec<String>,
    },
    /// Replace the whole flow program with the flows in FILE, atomically.
    ReplaceFlows {
        /// The flow file, or "-" for standard input.
        file: PathBuf,
    },
    /// Show how a flow or a packet (hex bytes) would be processed.
    Trace {
        /// A flow ("in_port=1,tcp,tp_dst=80") or packet bytes in hex.
        #[arg(value_name = "FLOW|HEXPACKET")]
        target: String,
    },
    /// Print port state and counters.
    DumpPorts {
        /// Only this port.
        port: Option<String>,
    },
    /// Print per-PMD statistics (cache hits per tier, cycles per packet).
    PmdStatsShow,
    /// Reset per-PMD statistics.
    PmdStatsClear,
    /// Print the exact-match and megaflow cache contents.
    DumpCache,
    /// Capture packets of PORT into a pcap file.
    Capture {
        /// The port to capture on.
        port: String,
        /// Stop after N packets.
        #[arg(short = 'c', value_name = "N")]
        count: Option<u64>,
        /// The pcap file sluiced writes (made absolute here).
        #[arg(short = 'w', value_name = "FILE")]
        file: PathBuf,
    },
    /// Print connection tracking entries.
    DumpConntrack {
        /// Only this zone, as "zone=N".
        zone: Option<String>,
    },
    /// Delete connection tracking entries.
    FlushConntrack {
        /// Only this zone, as "zone=N".
        zone: Option<String>,
    },
    /// Print connection tracking counters.
    ConntrackStats,
    /// Print the service table (VIPs and endpoints).
    DumpServices,
    /// Print the remote tunnel endpoints.
    DumpTunnels,
    /// Print the neighbour (ARP) cache.
    DumpNeighbours,
    /// Empty the neighbour (ARP) cache.
    FlushNeighbours,
    /// Send any command with string arguments (like ovs-appctl).
    Call {
        /// The command name.
        command: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Call a structured method with JSON params.
    CallMethod {
        /// The method name.
        method: String,
        /// The params as JSON (default: []).
        params: Option<String>,
    },
}

/// What to send: a text command or a structured method call.
#[derive(Debug, PartialEq)]
enum Request {
    Command { name: String, args: Vec<String> },
    Method { name: String, params: Value },
}

/// A problem found before contacting the server (exit status 2).
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error("cannot read flow file {}: {}", path.display(), io_error_text(source))]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("cannot make capture file path {} absolute: {}", path.display(), io_error_text(source))]
    CapturePath { path: PathBuf, source: io::Error },
    #[error("params of call-method are not valid JSON: {0}")]
    Params(serde_json::Error),
}

fn command(name: &str, args: impl IntoIterator<Item = String>) -> Request {
    Request::Command {
        name: name.to_owned(),
        args: args.into_iter().collect(),
    }
}

/// Reads flow lines like `ovs-ofctl`: everything from `#` to the end of a
/// line is a comment; blank lines are skipped; the rest is trimmed.
fn read_flows(path: &Path) -> Result<Vec<String>, InputError> {
    let read_err = |source| InputError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    if path == Path::new("-") {
        io::stdin().read_to_string(&mut text).map_err(read_err)?;
    } else {
        text = std::fs::read_to_string(path).map_err(read_err)?;
    }
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

fn flow_adds(flows: Vec<String>) -> impl Iterator<Item = Value> {
    flows
        .into_iter()
        .map(|flow| json!({"op": "add", "flow": flow}))
}

/// Maps a subcommand to the request it sends.
fn request_for(cmd: Command) -> Result<Request, InputError> {
    let strict_flag = |strict: bool| strict.then(|| "--strict".to_owned());
    Ok(match cmd {
        Command::ListCommands => command("list-commands", []),
        Command::Version => command("version", []),
        Command::AddFlow { flow } => command("add-flow", [flow]),
        Command::AddFlows { file } => Request::Method {
            name: "flow-bundle".to_owned(),
            params: Value::Array(flow_adds(read_flows(&file)?).collect()),
        },
        Command::DelFlows { strict, match_ } => {
            command("del-flows", strict_flag(strict).into_iter().chain(match_))
        }
        Command::ModFlows { strict, flow } => command(
            "mod-flows",
            strict_flag(strict).into_iter().chain(Some(flow)),
        ),
        Command::DumpFlows { spec } => command("dump-flows", spec),
        Command::ReplaceFlows { file } => {
            let flows = read_flows(&file)?;
            let ops = std::iter::once(json!({"op": "del", "match": ""}))
                .chain(flow_adds(flows))
                .collect();
            Request::Method {
                name: "flow-bundle".to_owned(),
                params: Value::Array(ops),
            }
        }
        Command::Trace { target } => command("trace", [target]),
        Command::DumpPorts { port } => command("dump-ports", port),
        Command::PmdStatsShow => command("pmd-stats-show", []),
        Command::PmdStatsClear => command("pmd-stats-clear", []),
        Command::DumpCache => command("dump-cache", []),
        Command::Capture { port, count, file } => {
            // sluiced has its own working directory.
            let file = std::path::absolute(&file).map_err(|source| InputError::CapturePath {
                path: file.clone(),
                source,
            })?;
            let mut args = vec![port, file.to_string_lossy().into_owned()];
            args.extend(count.map(|n| n.to_string()));
            command("capture", args)
        }
        Command::DumpConntrack { zone } => command("dump-conntrack", zone),
        Command::FlushConntrack { zone } => command("flush-conntrack", zone),
        Command::ConntrackStats => command("conntrack-stats", []),
        Command::DumpServices => command("dump-services", []),
        Command::DumpTunnels => command("dump-tunnels", []),
        Command::DumpNeighbours => command("dump-neighbours", []),
        Command::FlushNeighbours => command("flush-neighbours", []),
        Command::Call {
            command: name,
            args,
        } => command(&name, args),
        Command::CallMethod { method, params } => Request::Method {
            name: method,
            params: match params {
                Some(text) => serde_json::from_str(&text).map_err(InputError::Params)?,
                None => json!([]),
            },
        },
    })
}

/// Sends `request` and renders the reply for stdout.
fn execute(
    client: &mut CtlClient,
    request: &Request,
    format: Format,
) -> Result<String, ClientError> {
    let render_json = |value: &Value| format!("{value:#}\n");
    Ok(match (request, format) {
        (Request::Command { name, args }, Format::Text) => client.call(name, args)?,
        (Request::Command { name, args }, Format::Json) => {
            render_json(&client.call_json(name, args)?)
        }
        (Request::Method { name, params }, format) => {
            match (client.call_method(name, params.clone())?, format) {
                (Value::String(text), Format::Text) => text,
                (value, _) => render_json(&value),
            }
        }
    })
}

/// An error message on one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("sluicectl: {}", one_line(message));
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Ok(timeout) = Duration::try_from_secs_f64(cli.timeout) else {
        return fail("--timeout must be a non-negative number of seconds", 2);
    };
    let request = match request_for(cli.command) {
        Ok(request) => request,
        Err(e) => return fail(&e.to_string(), 2),
    };
    let outcome = CtlClient::connect(&cli.socket).and_then(|mut client| {
        client.set_timeout(Some(timeout))?;
        execute(&mut client, &request, cli.format)
    });
    match outcome {
        Ok(output) => {
            let mut stdout = io::stdout().lock();
            if stdout
                .write_all(output.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        // exit_code() is 1 or 2.
        Err(e) => fail(&e.to_string(), e.exit_code() as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Request {
        let cli = Cli::try_parse_from(std::iter::once("sluicectl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        request_for(cli.command).unwrap()
    }

    fn cmd(name: &str, args: &[&str]) -> Request {
        command(name, args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn subcommands_map_to_unixctl_commands() {
        let cases: &[(&[&str], Request)] = &[
            (&["list-commands"], cmd("list-commands", &[])),
            (
                &["add-flow", "priority=1,actions=drop"],
                cmd("add-flow", &["priority=1,actions=drop"]),
            ),
            (&["del-flows"], cmd("del-flows", &[])),
            (
                &["del-flows", "--strict", "ip"],
                cmd("del-flows", &["--strict", "ip"]),
            ),
            (
                &["mod-flows", "ip,actions=drop"],
                cmd("mod-flows", &["ip,actions=drop"]),
            ),
            (
                &["mod-flows", "--strict", "ip,actions=drop"],
                cmd("mod-flows", &["--strict", "ip,actions=drop"]),
            ),
            (
                &["dump-flows", "table=3", "ip"],
                cmd("dump-flows", &["table=3", "ip"]),
            ),
            (&["trace", "00ff"], cmd("trace", &["00ff"])),
            (&["dump-ports", "p1"], cmd("dump-ports", &["p1"])),
            (
                &["capture", "p1", "-w", "/tmp/x.pcap", "-c", "5"],
                cmd("capture", &["p1", "/tmp/x.pcap", "5"]),
            ),
            (
                &["flush-conntrack", "zone=4"],
                cmd("flush-conntrack", &["zone=4"]),
            ),
            (
                &["call", "vlog/set", "-x", "y"],
                cmd("vlog/set", &["-x", "y"]),
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(&parse(args), expected, "{args:?}");
        }
    }

    #[test]
    fn dump_flows_takes_at_most_two_specs_and_capture_needs_a_file() {
        assert!(Cli::try_parse_from(["sluicectl", "dump-flows", "a", "b", "c"]).is_err());
        assert!(Cli::try_parse_from(["sluicectl", "capture", "p1"]).is_err());
    }

    #[test]
    fn call_method_params_must_be_json() {
        let cli = Cli::try_parse_from(["sluicectl", "call-method", "m", "{nope"]).unwrap();
        let err = request_for(cli.command).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("params of call-method are not valid JSON"),
            "{err}"
        );
        assert_eq!(
            parse(&["call-method", "m", r#"{"a":1}"#]),
            Request::Method {
                name: "m".into(),
                params: json!({"a": 1})
            }
        );
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n  b\n\n"), "a; b");
    }
}
