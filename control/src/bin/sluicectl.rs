//! `sluicectl`: command-line client of the `sluiced` control socket.
//!
//! Every subcommand makes one typed call of a `sluice-api` method and
//! prints the typed reply: as text rendered by the same code `sluiced` uses
//! for `ovs-appctl` (so `sluicectl X ARGS` prints what
//! `ovs-appctl -t SOCK X ARGS` prints), or with `--format json` as the
//! reply's JSON. `add-flows` and `replace-flows` read a flow file locally
//! and send it as one atomic `flow-bundle`. `call` sends a raw text command
//! and `call-method` raw JSON, for commands this sluicectl does not know.
//!
//! Exit status: 0 on success, 1 if `sluiced` answered with an error (printed
//! to stderr as one line), 2 if it could not be asked (cannot connect, usage
//! error, unreadable input file, broken connection).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use sluice_api::flows::FlowOp;
use sluice_api::{ApiError, Empty, FromArgs, Method, Render};
use sluice_control::{io_error_text, Client, ClientError, DEFAULT_SOCKET};

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
    /// The reply as text, exactly as ovs-appctl prints it.
    Text,
    /// The reply as JSON (the sluice-api reply type).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Health probe (exit 0 healthy, 1 not, with one line saying why):
    /// sluiced answers, forwards a committed program, the agent applied
    /// the database to it, nestdb-server serves Sluice_Node.
    Probe {
        /// What to probe.
        #[arg(value_enum)]
        what: sluice_control::probe::Probe,
        /// nestdb-server (for agent and nestdb).
        #[arg(long, env = "SLUICE_DB", default_value_t = format!("unix:{}", sluice_api::paths::NESTDB_SOCK), value_name = "REMOTE")]
        db: String,
    },
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
    /// Print per-PMD cycles by stage (rx, parse, classifier tiers, actions,
    /// conntrack, encap/decap, tx).
    PmdPerfShow,
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
        /// Filters: "zone=N" and/or "ip=A.B.C.D".
        #[arg(num_args = 0..=2, value_name = "[zone=N] [ip=A.B.C.D]")]
        filter: Vec<String>,
    },
    /// Delete connection tracking entries.
    FlushConntrack {
        /// Filters: "zone=N" and/or "ip=A.B.C.D".
        #[arg(num_args = 0..=2, value_name = "[zone=N] [ip=A.B.C.D]")]
        filter: Vec<String>,
    },
    /// Print connection tracking counters.
    ConntrackStats,
    /// Print the service table (VIPs and endpoints).
    DumpServices,
    /// Apply a Service update batch (JSON, see sluice-api's ServiceUpdate) from FILE.
    ServiceUpdate {
        /// The JSON file, or "-" for standard input.
        file: PathBuf,
    },
    /// Attach a port while sluiced forwards (a pod's veth host end with
    /// iface=NAME, or any DPDK device with devargs=...).
    PortAdd {
        /// Port name.
        name: String,
        /// iface=IFACE or devargs=DEVARGS, then optionally driver=af-packet|af-xdp,
        /// ofport=N, rxq=N.
        #[arg(num_args = 1..=4, value_name = "iface=IFACE|devargs=DEVARGS [driver=..] [ofport=N] [rxq=N]")]
        args: Vec<String>,
    },
    /// Detach a port (by name or number) while sluiced forwards.
    PortDel {
        /// Port name or OpenFlow number.
        port: String,
    },
    /// Print the node program's generation in force, sluiced's instance id
    /// and the ports' state.
    NodeStatus,
    /// Print what the last restart of sluiced cost: hand-over or crash
    /// restore, duration, port gap, frames lost, connections carried over,
    /// state bytes.
    RestartReport,
    /// Print the node program sluiced holds (every commit applied; with
    /// --format json, the whole program).
    NodeProgram,
    /// Apply a node change set (JSON, see sluice-api's NodeChanges) from
    /// FILE in one atomic step.
    NodeCommit {
        /// The JSON file, or "-" for standard input.
        file: PathBuf,
    },
    /// Explain which endpoint a connection to a Service gets.
    LbTrace {
        /// tcp, udp or sctp.
        protocol: String,
        /// Client address, optionally with its port (A.B.C.D[:PORT]).
        src: String,
        /// Service address.
        dst: String,
        /// Service port.
        port: String,
        /// "zone=N".
        zone: Option<String>,
    },
    /// Print the remote tunnel endpoints.
    DumpTunnels,
    /// Add or move a remote VTEP.
    AddVtep {
        /// Node name.
        node: String,
        /// Its underlay IPv4 address.
        ip: String,
    },
    /// Remove a remote VTEP.
    DelVtep {
        /// Node name.
        node: String,
    },
    /// Move the local VTEP address.
    SetVtep {
        /// A.B.C.D/N.
        cidr: String,
    },
    /// Print the Geneve overhead and the pod MTU.
    TunnelMtu,
    /// Show the encap (VNI VTEP_IP HEX) or decap (HEX) steps for a frame.
    TunnelTrace {
        /// [VNI VTEP_IP] HEX.
        #[arg(num_args = 1..=3, value_name = "[VNI VTEP_IP] HEX")]
        args: Vec<String>,
    },
    /// Print the neighbour (ARP) cache.
    DumpNeighbours,
    /// Empty the neighbour (ARP) cache.
    FlushNeighbours,
    /// Add a permanent neighbour.
    NeighSet {
        /// Its IPv4 address.
        ip: String,
        /// Its MAC address.
        mac: String,
    },
    /// Remove a neighbour.
    NeighDel {
        /// Its IPv4 address.
        ip: String,
    },
    /// Print the local stack's address and counters.
    LocalStackShow,
    /// Print pod port bindings (port security).
    DumpPortSecurity,
    /// Bind a pod port to its MAC and addresses.
    SetPortSecurity {
        /// OpenFlow port number.
        port: String,
        /// MAC address.
        mac: String,
        /// IPv4 addresses, comma separated.
        ips: String,
    },
    /// Remove a pod port's binding.
    DelPortSecurity {
        /// OpenFlow port number.
        port: String,
    },
    /// Print which PMD polls which rx queue.
    PmdRxqShow,
    /// Stop the packet capture.
    CaptureStop,
    /// Print the packet capture's progress.
    CaptureStatus,
    /// Add or replace a group (ovs-ofctl syntax).
    AddGroup {
        /// E.g. "group_id=1,type=select,bucket=output:1,bucket=output:2".
        group: String,
    },
    /// Print the groups.
    DumpGroups,
    /// Send any command with string arguments (like ovs-appctl) and print its text.
    Call {
        /// The command name.
        command: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Call a structured method with JSON params and print its JSON result.
    CallMethod {
        /// The method name.
        method: String,
        /// The params as JSON (default: {}).
        params: Option<String>,
    },
}

/// A problem found before contacting the server (exit status 2).
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error("cannot read {} {}: {}", what, path.display(), io_error_text(source))]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot make capture file path {} absolute: {}", path.display(), io_error_text(source))]
    CapturePath { path: PathBuf, source: io::Error },
    #[error("params of call-method are not valid JSON: {0}")]
    Params(serde_json::Error),
    #[error("{0}")]
    Api(ApiError),
}

impl From<ApiError> for InputError {
    fn from(e: ApiError) -> Self {
        InputError::Api(e)
    }
}

type Exec = Box<dyn FnOnce(&mut Client, Format) -> Result<String, ClientError>>;

/// One request to send: its method name and params (for tests and
/// `--dry-run`-like inspection) and how to run it and print the reply.
struct Call {
    method: &'static str,
    params: Value,
    exec: Exec,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.params)
    }
}

/// A typed call of `M`: the reply is rendered as the server's text, or
/// printed as the reply's JSON.
fn typed<M: Method>(request: M::Request) -> Call {
    let params = serde_json::to_value(&request).unwrap_or(Value::Null);
    Call {
        method: M::NAME,
        params,
        exec: Box::new(move |client, format| {
            let reply = client.call::<M>(&request)?;
            Ok(match format {
                Format::Text => reply.render(),
                Format::Json => json_text(&reply),
            })
        }),
    }
}

/// `M`'s request read from command-line strings, exactly as sluiced reads
/// `ovs-appctl` arguments.
fn from_args<M: Method>(args: &[String]) -> Result<Call, InputError> {
    Ok(typed::<M>(M::Request::from_args(args)?))
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Reads a file, or standard input for "-".
fn read_input(path: &Path, what: &'static str) -> Result<String, InputError> {
    let read_err = |source| InputError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    if path == Path::new("-") {
        io::stdin().read_to_string(&mut text).map_err(read_err)?;
    } else {
        text = std::fs::read_to_string(path).map_err(read_err)?;
    }
    Ok(text)
}

/// Reads flow lines like `ovs-ofctl`: everything from `#` to the end of a
/// line is a comment; blank lines are skipped; the rest is trimmed.
fn read_flows(path: &Path) -> Result<Vec<String>, InputError> {
    Ok(read_input(path, "flow file")?
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

fn flow_adds(flows: Vec<String>) -> impl Iterator<Item = FlowOp> {
    flows.into_iter().map(|flow| FlowOp::Add { flow })
}

fn strings<I: IntoIterator<Item = S>, S: Into<String>>(v: I) -> Vec<String> {
    v.into_iter().map(Into::into).collect()
}

/// Maps a subcommand to the call it makes.
fn call_for(cmd: Command) -> Result<Call, InputError> {
    use sluice_api::{conntrack as ct, flows, node, pmd, ports, service, stack, system, tunnel};
    let empty = Empty {};
    Ok(match cmd {
        // Answered by `main` (it is not one control-socket call).
        Command::Probe { .. } => {
            return Err(InputError::Api(ApiError::invalid(
                "probe is not a control-socket method",
            )))
        }
        Command::ListCommands => typed::<system::ListCommands>(empty),
        Command::Version => typed::<system::Version>(empty),
        Command::AddFlow { flow } => typed::<flows::AddFlow>(flows::FlowText { flow }),
        Command::AddGroup { group } => typed::<flows::AddGroup>(flows::FlowText { flow: group }),
        Command::AddFlows { file } => typed::<flows::FlowBundle>(flows::FlowBundleRequest {
            ops: flow_adds(read_flows(&file)?).collect(),
        }),
        Command::DelFlows { strict, match_ } => typed::<flows::DelFlows>(flows::DelFlowsRequest {
            strict,
            filter: match_.unwrap_or_default(),
        }),
        Command::ModFlows { strict, flow } => {
            typed::<flows::ModFlows>(flows::ModFlowsRequest { strict, flow })
        }
        Command::DumpFlows { spec } => from_args::<flows::DumpFlows>(&spec)?,
        Command::DumpGroups => typed::<flows::DumpGroups>(empty),
        Command::ReplaceFlows { file } => {
            let flows = read_flows(&file)?;
            typed::<flows::FlowBundle>(flows::FlowBundleRequest {
                ops: std::iter::once(FlowOp::Del {
                    match_: String::new(),
                    strict: false,
                })
                .chain(flow_adds(flows))
                .collect(),
            })
        }
        Command::Trace { target } => typed::<flows::Trace>(flows::TraceRequest { target }),
        Command::DumpPorts { port } => typed::<ports::DumpPorts>(ports::DumpPortsRequest { port }),
        Command::PmdStatsShow => typed::<pmd::PmdStatsShow>(empty),
        Command::PmdStatsClear => typed::<pmd::PmdStatsClear>(empty),
        Command::PmdPerfShow => typed::<pmd::PmdPerfShow>(empty),
        Command::PmdRxqShow => typed::<pmd::PmdRxqShow>(empty),
        Command::DumpCache => typed::<pmd::DumpCache>(empty),
        Command::Capture { port, count, file } => {
            // sluiced has its own working directory.
            let file = std::path::absolute(&file).map_err(|source| InputError::CapturePath {
                path: file.clone(),
                source,
            })?;
            let request = ports::CaptureRequest {
                port,
                file: file.to_string_lossy().into_owned(),
                count,
            };
            request.check()?;
            typed::<ports::Capture>(request)
        }
        Command::CaptureStop => typed::<ports::CaptureStop>(empty),
        Command::CaptureStatus => typed::<ports::CaptureStatus>(empty),
        Command::DumpConntrack { filter } => from_args::<ct::DumpConntrack>(&filter)?,
        Command::FlushConntrack { filter } => from_args::<ct::FlushConntrack>(&filter)?,
        Command::ConntrackStats => typed::<ct::ConntrackStats>(empty),
        Command::DumpServices => typed::<service::DumpServices>(empty),
        Command::ServiceUpdate { file } => {
            let text = read_input(&file, "service update file")?;
            from_args::<service::UpdateServices>(&[text])?
        }
        Command::PortAdd { name, args } => {
            from_args::<ports::PortAdd>(&[vec![name], args].concat())?
        }
        Command::PortDel { port } => from_args::<ports::PortDel>(&[port])?,
        Command::NodeStatus => typed::<node::QueryNodeStatus>(empty),
        Command::NodeProgram => typed::<node::QueryNodeProgram>(empty),
        Command::RestartReport => typed::<sluice_api::handover::QueryRestartReport>(empty),
        Command::NodeCommit { file } => {
            let text = read_input(&file, "node change file")?;
            from_args::<node::NodeCommit>(&[text])?
        }
        Command::LbTrace {
            protocol,
            src,
            dst,
            port,
            zone,
        } => from_args::<service::LbTrace>(&strings(
            [protocol, src, dst, port].into_iter().chain(zone),
        ))?,
        Command::DumpTunnels => typed::<tunnel::DumpTunnels>(empty),
        Command::AddVtep { node, ip } => from_args::<tunnel::AddVtep>(&[node, ip])?,
        Command::DelVtep { node } => typed::<tunnel::DelVtep>(tunnel::DelVtepRequest { node }),
        Command::SetVtep { cidr } => from_args::<tunnel::SetVtep>(&[cidr])?,
        Command::TunnelMtu => typed::<tunnel::TunnelMtu>(empty),
        Command::TunnelTrace { args } => from_args::<tunnel::TunnelTrace>(&args)?,
        Command::DumpNeighbours => typed::<stack::DumpNeighbours>(empty),
        Command::FlushNeighbours => typed::<stack::FlushNeighbours>(empty),
        Command::NeighSet { ip, mac } => from_args::<stack::NeighSet>(&[ip, mac])?,
        Command::NeighDel { ip } => from_args::<stack::NeighDel>(&[ip])?,
        Command::LocalStackShow => typed::<stack::LocalStackShow>(empty),
        Command::DumpPortSecurity => typed::<stack::DumpPortSecurity>(empty),
        Command::SetPortSecurity { port, mac, ips } => {
            from_args::<stack::SetPortSecurity>(&[port, mac, ips])?
        }
        Command::DelPortSecurity { port } => from_args::<stack::DelPortSecurity>(&[port])?,
        Command::Call { command, args } => Call {
            method: "(text)",
            params: Value::Array(args.iter().cloned().map(Value::String).collect()),
            exec: Box::new(move |client, _| client.call_text(&command, &args)),
        },
        Command::CallMethod { method, params } => {
            let params = match params {
                Some(text) => serde_json::from_str(&text).map_err(InputError::Params)?,
                None => Value::Object(Default::default()),
            };
            let p = params.clone();
            Call {
                method: "(method)",
                params,
                exec: Box::new(move |client, _| Ok(json_text(&client.call_raw(&method, p)?))),
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
    let format = cli.format;
    if let Command::Probe { what, db } = &cli.command {
        let t = if timeout.is_zero() {
            Duration::from_secs(5)
        } else {
            timeout
        };
        return match sluice_control::probe::run(*what, &cli.socket, db, t) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(why) => fail(&why, 1),
        };
    }
    let call = match call_for(cli.command) {
        Ok(call) => call,
        Err(e) => return fail(&e.to_string(), 2),
    };
    let outcome = Client::connect(&cli.socket).and_then(|mut client| {
        client.set_timeout(Some(timeout))?;
        (call.exec)(&mut client, format)
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
    use serde_json::json;

    fn parse(args: &[&str]) -> Call {
        let cli = Cli::try_parse_from(std::iter::once("sluicectl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        call_for(cli.command).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn subcommands_map_to_typed_requests() {
        let cases: &[(&[&str], &str, Value)] = &[
            (&["list-commands"], "list-commands", json!({})),
            (
                &["add-flow", "priority=1,actions=drop"],
                "add-flow",
                json!({"flow": "priority=1,actions=drop"}),
            ),
            (
                &["del-flows"],
                "del-flows",
                json!({"strict": false, "filter": ""}),
            ),
            (
                &["del-flows", "--strict", "ip"],
                "del-flows",
                json!({"strict": true, "filter": "ip"}),
            ),
            (
                &["mod-flows", "--strict", "ip,actions=drop"],
                "mod-flows",
                json!({"strict": true, "flow": "ip,actions=drop"}),
            ),
            (
                &["dump-flows", "table=3", "ip"],
                "dump-flows",
                json!({"filter": "table=3,ip"}),
            ),
            (&["trace", "00ff"], "trace", json!({"target": "00ff"})),
            (&["dump-ports", "p1"], "dump-ports", json!({"port": "p1"})),
            (
                &["capture", "p1", "-w", "/tmp/x.pcap", "-c", "5"],
                "capture",
                json!({"port": "p1", "file": "/tmp/x.pcap", "count": 5}),
            ),
            (
                &["flush-conntrack", "zone=4"],
                "flush-conntrack",
                json!({"zone": 4, "ip": null}),
            ),
            (
                &["lb-trace", "tcp", "10.0.0.1:4000", "10.96.0.1", "80"],
                "lb-trace",
                json!({"protocol": "tcp", "src": "10.0.0.1", "sport": 4000, "dst": "10.96.0.1", "dport": 80, "zone": 0}),
            ),
            (
                &["add-vtep", "node-b", "192.168.1.2"],
                "add-vtep",
                json!({"node": "node-b", "ip": "192.168.1.2"}),
            ),
            (
                &["set-port-security", "3", "0a:58:0a:f4:01:05", "10.244.1.5"],
                "set-port-security",
                json!({"port": 3, "mac": [10, 88, 10, 244, 1, 5], "ips": ["10.244.1.5"]}),
            ),
            (&["node-status"], "node-status", json!({})),
            (&["restart-report"], "restart-report", json!({})),
            (
                &["call", "vlog/set", "-x", "y"],
                "(text)",
                json!(["-x", "y"]),
            ),
        ];
        for (args, method, params) in cases {
            let call = parse(args);
            assert_eq!(call.method, *method, "{args:?}");
            assert_eq!(&call.params, params, "{args:?}");
        }
    }

    #[test]
    fn port_add_reads_its_arguments_like_ovs_appctl() {
        let call = parse(&["port-add", "pod-a", "iface=veth-a", "ofport=5", "rxq=2"]);
        assert_eq!(call.method, "port-add");
        assert_eq!(call.params["name"], "pod-a");
        assert_eq!(call.params["ofport"], 5);
        assert_eq!(call.params["rx_queues"], 2);
        let cli = Cli::try_parse_from(["sluicectl", "port-add", "pod-a", "ofport=x"]).unwrap();
        assert!(matches!(call_for(cli.command), Err(InputError::Api(_))));
    }

    #[test]
    fn bad_arguments_are_refused_before_contacting_the_server() {
        for args in [
            &["dump-conntrack", "zone=x"][..],
            &["add-vtep", "n", "300.0.0.1"],
            &["neigh-set", "10.0.0.1", "zz:00:00:00:00:00"],
            &["set-vtep", "10.0.0.1"],
            &["lb-trace", "icmp", "10.0.0.1", "10.0.0.2", "80"],
        ] {
            let cli = Cli::try_parse_from(std::iter::once("sluicectl").chain(args.iter().copied()))
                .unwrap();
            let e = call_for(cli.command).unwrap_err();
            assert!(matches!(e, InputError::Api(_)), "{args:?}: {e}");
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
        let err = call_for(cli.command).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("params of call-method are not valid JSON"),
            "{err}"
        );
        assert_eq!(
            parse(&["call-method", "m", r#"{"a":1}"#]).params,
            json!({"a": 1})
        );
    }

    #[test]
    fn node_commit_reads_the_change_set_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.json");
        std::fs::write(
            &path,
            r#"{"generation": 7, "expected_generation": 6, "vteps_set": {"node-b": "192.0.2.11"}}"#,
        )
        .unwrap();
        let call = parse(&["node-commit", path.to_str().unwrap()]);
        assert_eq!(call.method, "node-commit");
        assert_eq!(call.params["generation"], json!(7));
        assert_eq!(call.params["expected_generation"], json!(6));
        assert_eq!(call.params["vteps_set"], json!({"node-b": "192.0.2.11"}));
        std::fs::write(&path, r#"{"generation": 7, "bogus": 1}"#).unwrap();
        let cli =
            Cli::try_parse_from(["sluicectl", "node-commit", path.to_str().unwrap()]).unwrap();
        let e = call_for(cli.command).unwrap_err();
        assert!(matches!(e, InputError::Api(_)), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(one_line("a\n  b\n\n"), "a; b");
    }
}
