//! The table of control commands and structured methods.
//!
//! Features register their commands next to their own code, before or after
//! the server started; the server looks a name up for every request. A name
//! can have a text *command* (unixctl style: string arguments in, text out),
//! a structured *method* (any JSON in, any JSON out), or both:
//!
//! - `params` is an array: the command runs if there is one (its arguments
//!   must all be strings and their number within its bounds), else the method
//!   gets the array.
//! - `params` is an object: the method runs if there is one, else the command
//!   runs with the strings in `params["args"]` and its text becomes a JSON
//!   string. This is how `sluicectl --format json` asks for machine-readable
//!   output that falls back to text.
//!
//! Like OVS, a text result or error that is not empty and does not end in a
//! newline gets one appended, so `ovs-appctl` output ends cleanly.
//!
//! Thread-safety: [`Registry`] is a cheap `Clone` handle (an `Arc`) that is
//! `Send + Sync`. The table sits behind an `RwLock` that is held only to look
//! up or change entries, never while a handler runs, so a handler may itself
//! register or unregister commands.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::value::RawValue;
use serde_json::Value;

use super::args::{self, ArgScan, ObjectArgs};

/// A text command: receives the arguments (without the command name) and
/// returns the reply text or an error text.
pub type CommandHandler = Arc<dyn Fn(&[String]) -> Result<String, String> + Send + Sync>;

/// A structured method: receives `params` (a JSON array or object) and returns
/// any JSON result or an error text.
pub type MethodHandler = Arc<dyn Fn(&Value) -> Result<Value, String> + Send + Sync>;

/// A structured method that reads `params` straight from its JSON text
/// (typed values parsed by serde visitors, no [`Value`] tree): registered
/// with [`Registry::register_raw_method`] next to the [`MethodHandler`]
/// that gives the same result from the decoded value.
pub type RawMethodHandler = Arc<dyn Fn(&RawValue) -> Result<Value, String> + Send + Sync>;

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The name is already taken by a command (or method) of the same kind.
    #[error("control {kind} \"{name}\" is already registered; register each name once or unregister it first")]
    Duplicate {
        /// "command" or "method".
        kind: &'static str,
        /// The contested name.
        name: String,
    },
    /// The name cannot be typed as a single `ovs-appctl` argument.
    #[error("control command name {0:?} is invalid: use a non-empty name without whitespace or control characters")]
    InvalidName(String),
    /// `min_args > max_args`.
    #[error("control command \"{name}\" accepts at least {min} and at most {max} arguments, which is impossible; fix the bounds")]
    ArgBounds {
        /// The command name.
        name: String,
        /// Minimum argument count.
        min: usize,
        /// Maximum argument count.
        max: usize,
    },
}

/// What a command does when it runs.
#[derive(Clone)]
enum Action {
    ListCommands,
    Version,
    Exit,
    Handler(CommandHandler),
}

#[derive(Clone)]
struct Command {
    usage: String,
    min_args: usize,
    max_args: usize,
    action: Action,
}

#[derive(Default)]
struct Table {
    commands: BTreeMap<String, Command>,
    methods: BTreeMap<String, MethodHandler>,
    /// Methods that also read their params from the text.
    raw_methods: BTreeMap<String, RawMethodHandler>,
}

/// The shared command table. Clone it freely: all clones see the same table.
#[derive(Clone)]
pub struct Registry {
    table: Arc<RwLock<Table>>,
    version: Arc<str>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("commands", &self.command_names())
            .field("version", &self.version)
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// What the server provides to built-in commands while dispatching.
pub struct DispatchContext<'a> {
    /// Called by the `exit` command.
    pub on_exit: &'a (dyn Fn() + Send + Sync),
}

impl Registry {
    /// A registry holding the built-ins `list-commands`, `version` (reporting
    /// `sluiced (Sluice) <crate version>`, the daemon this default is for)
    /// and `exit`.
    pub fn new() -> Self {
        Self::with_version(format!("sluiced (Sluice) {}", env!("CARGO_PKG_VERSION")))
    }

    /// Like [`Registry::new`], with the text `version` replies.
    pub fn with_version(version: impl Into<String>) -> Self {
        let mut table = Table::default();
        for (name, usage, action) in [
            ("list-commands", "", Action::ListCommands),
            ("version", "", Action::Version),
            ("exit", "", Action::Exit),
        ] {
            table.commands.insert(
                name.to_owned(),
                Command {
                    usage: usage.to_owned(),
                    min_args: 0,
                    max_args: 0,
                    action,
                },
            );
        }
        Self {
            table: Arc::new(RwLock::new(table)),
            version: version.into().into(),
        }
    }

    /// Registers the text command `name`. `usage` describes its arguments in
    /// `list-commands`; requests with fewer than `min_args` or more than
    /// `max_args` arguments are refused before `handler` runs.
    ///
    /// # Errors
    /// [`RegistryError`] if the name is invalid or already a command, or the
    /// bounds are inverted.
    pub fn register(
        &self,
        name: &str,
        usage: &str,
        min_args: usize,
        max_args: usize,
        handler: CommandHandler,
    ) -> Result<(), RegistryError> {
        validate_name(name)?;
        if min_args > max_args {
            return Err(RegistryError::ArgBounds {
                name: name.to_owned(),
                min: min_args,
                max: max_args,
            });
        }
        let mut table = self.write();
        if table.commands.contains_key(name) {
            return Err(RegistryError::Duplicate {
                kind: "command",
                name: name.to_owned(),
            });
        }
        table.commands.insert(
            name.to_owned(),
            Command {
                usage: usage.to_owned(),
                min_args,
                max_args,
                action: Action::Handler(handler),
            },
        );
        Ok(())
    }

    /// Registers the structured method `name`.
    ///
    /// # Errors
    /// [`RegistryError`] if the name is invalid or already a method.
    pub fn register_method(&self, name: &str, handler: MethodHandler) -> Result<(), RegistryError> {
        validate_name(name)?;
        let mut table = self.write();
        if table.methods.contains_key(name) {
            return Err(RegistryError::Duplicate {
                kind: "method",
                name: name.to_owned(),
            });
        }
        table.methods.insert(name.to_owned(), handler);
        Ok(())
    }

    /// Registers the structured method `name` twice over: `raw` reads the
    /// request's `params` text (what the server calls), `decoded` the same
    /// request as a [`Value`] ([`Registry::dispatch`]); both must give the
    /// same outcome.
    ///
    /// # Errors
    /// As [`Registry::register_method`].
    pub fn register_raw_method(
        &self,
        name: &str,
        raw: RawMethodHandler,
        decoded: MethodHandler,
    ) -> Result<(), RegistryError> {
        self.register_method(name, decoded)?;
        self.write().raw_methods.insert(name.to_owned(), raw);
        Ok(())
    }

    /// Removes the command and the method called `name`, for a feature that
    /// shuts down. Returns whether anything was removed. Requests already
    /// running finish normally.
    pub fn unregister(&self, name: &str) -> bool {
        let mut table = self.write();
        let command = table.commands.remove(name).is_some();
        let method = table.methods.remove(name).is_some();
        table.raw_methods.remove(name);
        command || method
    }

    /// Sorted names of every command and method.
    pub fn command_names(&self) -> Vec<String> {
        let table = self.read();
        let mut names: Vec<String> = table
            .commands
            .keys()
            .chain(table.methods.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every command and method with its usage, sorted by name (methods
    /// without a text form say `(JSON params)`).
    pub fn usages(&self) -> Vec<(String, String)> {
        let table = self.read();
        let mut entries: BTreeMap<&str, &str> = table
            .commands
            .iter()
            .map(|(name, command)| (name.as_str(), command.usage.as_str()))
            .collect();
        for name in table.methods.keys() {
            entries.entry(name.as_str()).or_insert("(JSON params)");
        }
        entries
            .into_iter()
            .map(|(n, u)| (n.to_owned(), u.to_owned()))
            .collect()
    }

    /// The daemon's version text.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `list-commands` text, in OVS's format.
    pub fn list_commands(&self) -> String {
        let mut out = String::from("The available commands are:\n");
        for (name, usage) in self.usages() {
            out.push_str(&format!("  {name:<23} {usage}\n"));
        }
        out
    }

    /// Runs request `method` with `params` and returns the JSON result or
    /// the error text. The server calls this for every request; tests of
    /// command owners call it directly.
    pub fn dispatch(
        &self,
        method: &str,
        params: &Value,
        ctx: &DispatchContext<'_>,
    ) -> Result<Value, String> {
        let (command, handler) = {
            let table = self.read();
            (
                table.commands.get(method).cloned(),
                table.methods.get(method).cloned(),
            )
        };
        match (params, command, handler) {
            (_, None, None) => Err(terminate(format!(
                "\"{method}\" is not a valid command (use \"list-commands\" to see a list of valid commands)"
            ))),
            (Value::Array(args), Some(command), _) => self
                .run_command(method, &command, args, ctx)
                .map(Value::String),
            (Value::Array(_) | Value::Object(_), _, Some(handler)) => handler(params),
            (Value::Object(object), Some(command), None) => {
                let args = match object.get("args") {
                    None | Some(Value::Null) => &[][..],
                    Some(Value::Array(args)) => args.as_slice(),
                    Some(_) => {
                        return Err(terminate(format!(
                            "\"{method}\" command expects \"args\" to be a list of strings"
                        )))
                    }
                };
                self.run_command(method, &command, args, ctx)
                    .map(Value::String)
            }
            _ => Err(terminate(format!(
                "\"{method}\" request has params that are neither a JSON array nor a JSON object"
            ))),
        }
    }

    /// Like [`Registry::dispatch`], with `params` as the request's raw JSON
    /// text (`None`: no params, an empty array). Text commands read their
    /// string arguments straight from the text (at most `max_args` of them
    /// are kept, the rest only counted), unknown names are refused without
    /// reading `params`, and only a structured method gets a decoded
    /// [`Value`], from `decode`, which may refuse (e.g. for lack of memory)
    /// with the error text to reply. Replies are the same as `dispatch`'s
    /// for the decoded request.
    pub fn dispatch_raw(
        &self,
        method: &str,
        params: Option<&RawValue>,
        ctx: &DispatchContext<'_>,
        decode: &mut dyn FnMut(&RawValue) -> Result<Value, String>,
    ) -> Result<Value, String> {
        self.dispatch_raw_charged(method, params, ctx, decode, &mut |_| Ok(()))
    }

    /// [`Registry::dispatch_raw`], where a method registered with
    /// [`Registry::register_raw_method`] reads its params from the text
    /// after `charge` accepted them (it may refuse, e.g. for lack of memory,
    /// with the error text to reply), and `decode` is not called for it.
    pub fn dispatch_raw_charged(
        &self,
        method: &str,
        params: Option<&RawValue>,
        ctx: &DispatchContext<'_>,
        decode: &mut dyn FnMut(&RawValue) -> Result<Value, String>,
        charge: &mut dyn FnMut(&RawValue) -> Result<(), String>,
    ) -> Result<Value, String> {
        let (command, handler, raw_handler) = {
            let table = self.read();
            (
                table.commands.get(method).cloned(),
                table.methods.get(method).cloned(),
                table.raw_methods.get(method).cloned(),
            )
        };
        let kind = params.map_or(b'[', |raw| {
            raw.get().trim_start().bytes().next().unwrap_or(b' ')
        });
        let keep = |command: &Command| command.max_args.saturating_add(1);
        match (kind, command, handler) {
            (_, None, None) => Err(terminate(format!(
                "\"{method}\" is not a valid command (use \"list-commands\" to see a list of valid commands)"
            ))),
            (b'[', Some(command), _) => {
                let scan = match params {
                    None => ArgScan::default(),
                    Some(raw) => args::scan_array(raw, keep(&command)).map_err(terminate)?,
                };
                self.run_scanned(method, &command, scan, ctx)
                    .map(Value::String)
            }
            (b'[' | b'{', _, Some(handler)) => {
                if let (Some(raw), Some(raw_handler)) = (params, raw_handler) {
                    charge(raw).map_err(terminate)?;
                    return raw_handler(raw);
                }
                let value = match params {
                    None => Value::Array(Vec::new()),
                    Some(raw) => decode(raw).map_err(terminate)?,
                };
                handler(&value)
            }
            (b'{', Some(command), None) => {
                let raw = params.expect("an object kind comes from present params");
                let scan = match args::scan_object_args(raw, keep(&command)).map_err(terminate)? {
                    ObjectArgs::Missing => ArgScan::default(),
                    ObjectArgs::List(scan) => scan,
                    ObjectArgs::NotAList => {
                        return Err(terminate(format!(
                            "\"{method}\" command expects \"args\" to be a list of strings"
                        )))
                    }
                };
                self.run_scanned(method, &command, scan, ctx)
                    .map(Value::String)
            }
            _ => Err(terminate(format!(
                "\"{method}\" request has params that are neither a JSON array nor a JSON object"
            ))),
        }
    }

    fn run_command(
        &self,
        method: &str,
        command: &Command,
        args: &[Value],
        ctx: &DispatchContext<'_>,
    ) -> Result<String, String> {
        let scan = ArgScan::from_values(args, command.max_args.saturating_add(1));
        self.run_scanned(method, command, scan, ctx)
    }

    fn run_scanned(
        &self,
        method: &str,
        command: &Command,
        scan: ArgScan,
        ctx: &DispatchContext<'_>,
    ) -> Result<String, String> {
        if scan.len < command.min_args {
            return Err(terminate(format!(
                "\"{method}\" command requires at least {} arguments",
                command.min_args
            )));
        }
        if scan.len > command.max_args {
            return Err(terminate(format!(
                "\"{method}\" command takes at most {} arguments",
                command.max_args
            )));
        }
        if scan.non_string {
            return Err(terminate(format!(
                "\"{method}\" command has non-string argument"
            )));
        }
        let strings = scan.strings;
        let outcome = match &command.action {
            Action::ListCommands => Ok(self.list_commands()),
            Action::Version => Ok(self.version.to_string()),
            Action::Exit => {
                (ctx.on_exit)();
                Ok(String::new())
            }
            Action::Handler(handler) => handler(&strings),
        };
        outcome.map(terminate).map_err(terminate)
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        // A handler never runs under the lock, so poisoning can only come
        // from a panic inside this module's own short critical sections,
        // which leave the map consistent.
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Appends a newline to non-empty text that lacks one, as OVS's unixctl does.
fn terminate(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

fn validate_name(name: &str) -> Result<(), RegistryError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RegistryError::InvalidName(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn no_exit() -> impl Fn() + Send + Sync {
        || panic!("exit must not be called")
    }

    fn echo() -> CommandHandler {
        Arc::new(|args: &[String]| Ok(args.join(" ")))
    }

    #[test]
    fn builtins_are_present_and_listed_in_ovs_format() {
        let r = Registry::with_version("sluiced (Sluice) 9.9");
        r.register("dump-flows", "[table=N] [MATCH]", 0, 2, echo())
            .unwrap();
        assert_eq!(
            r.list_commands(),
            "The available commands are:\n\
             \x20 dump-flows              [table=N] [MATCH]\n\
             \x20 exit                    \n\
             \x20 list-commands           \n\
             \x20 version                 \n"
        );
        let exit = no_exit();
        let ctx = DispatchContext { on_exit: &exit };
        assert_eq!(
            r.dispatch("version", &json!([]), &ctx),
            Ok(json!("sluiced (Sluice) 9.9\n"))
        );
    }

    #[test]
    fn argument_counts_and_types_are_checked_like_ovs() {
        let r = Registry::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        r.register(
            "add-flow",
            "FLOW",
            1,
            1,
            Arc::new(move |args: &[String]| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(format!("added {}", args[0]))
            }),
        )
        .unwrap();
        let exit = no_exit();
        let ctx = DispatchContext { on_exit: &exit };
        assert_eq!(
            r.dispatch("add-flow", &json!([]), &ctx),
            Err("\"add-flow\" command requires at least 1 arguments\n".to_owned())
        );
        assert_eq!(
            r.dispatch("add-flow", &json!(["a", "b"]), &ctx),
            Err("\"add-flow\" command takes at most 1 arguments\n".to_owned())
        );
        assert_eq!(
            r.dispatch("add-flow", &json!([3]), &ctx),
            Err("\"add-flow\" command has non-string argument\n".to_owned())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(
            r.dispatch("add-flow", &json!(["priority=1,actions=drop"]), &ctx),
            Ok(json!("added priority=1,actions=drop\n"))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            r.dispatch("nope", &json!([]), &ctx),
            Err("\"nope\" is not a valid command (use \"list-commands\" to see a list of valid commands)\n".to_owned())
        );
    }

    #[test]
    fn object_params_prefer_method_and_fall_back_to_text() {
        let r = Registry::new();
        r.register("dump-ports", "", 0, 1, echo()).unwrap();
        let exit = no_exit();
        let ctx = DispatchContext { on_exit: &exit };
        // Text fallback: args from the object, text as a JSON string.
        assert_eq!(
            r.dispatch("dump-ports", &json!({"args": ["p0"]}), &ctx),
            Ok(json!("p0\n"))
        );
        assert_eq!(
            r.dispatch("dump-ports", &json!({"args": "p0"}), &ctx),
            Err("\"dump-ports\" command expects \"args\" to be a list of strings\n".to_owned())
        );
        r.register_method(
            "dump-ports",
            Arc::new(|params: &Value| Ok(json!({"ports": [], "echo": params}))),
        )
        .unwrap();
        // Arrays still go to the text command, objects now to the method.
        assert_eq!(r.dispatch("dump-ports", &json!([]), &ctx), Ok(json!("")));
        assert_eq!(
            r.dispatch("dump-ports", &json!({"args": []}), &ctx),
            Ok(json!({"ports": [], "echo": {"args": []}}))
        );
        // A method alone takes arrays too; results are not touched.
        r.register_method(
            "flow-bundle",
            Arc::new(|p: &Value| Ok(json!(p.as_array().map(Vec::len)))),
        )
        .unwrap();
        assert_eq!(
            r.dispatch("flow-bundle", &json!([1, 2]), &ctx),
            Ok(json!(2))
        );
        assert_eq!(
            r.dispatch("flow-bundle", &json!("x"), &ctx),
            Err("\"flow-bundle\" request has params that are neither a JSON array nor a JSON object\n".to_owned())
        );
        assert!(r
            .list_commands()
            .contains("  flow-bundle             (JSON params)\n"));
    }

    #[test]
    fn registration_errors() {
        let r = Registry::new();
        assert_eq!(
            r.register("version", "", 0, 0, echo()),
            Err(RegistryError::Duplicate {
                kind: "command",
                name: "version".to_owned()
            })
        );
        assert!(matches!(
            r.register("two words", "", 0, 0, echo()),
            Err(RegistryError::InvalidName(_))
        ));
        assert!(matches!(
            r.register("", "", 0, 0, echo()),
            Err(RegistryError::InvalidName(_))
        ));
        assert!(matches!(
            r.register("x", "", 2, 1, echo()),
            Err(RegistryError::ArgBounds { .. })
        ));
        r.register_method("m", Arc::new(|_: &Value| Ok(Value::Null)))
            .unwrap();
        assert!(r
            .register_method("m", Arc::new(|_: &Value| Ok(Value::Null)))
            .is_err());
        assert!(r.unregister("m"));
        assert!(!r.unregister("m"));
        assert!(r
            .register_method("m", Arc::new(|_: &Value| Ok(Value::Null)))
            .is_ok());
    }

    #[test]
    fn handlers_may_register_while_running_and_exit_calls_back() {
        let r = Registry::new();
        let inner = r.clone();
        r.register(
            "enable-feature",
            "",
            0,
            0,
            Arc::new(move |_: &[String]| {
                inner
                    .register(
                        "feature-show",
                        "",
                        0,
                        0,
                        Arc::new(|_: &[String]| Ok("on".into())),
                    )
                    .map_err(|e| e.to_string())?;
                Ok(String::new())
            }),
        )
        .unwrap();
        let exits = AtomicUsize::new(0);
        let on_exit = || {
            exits.fetch_add(1, Ordering::SeqCst);
        };
        let ctx = DispatchContext { on_exit: &on_exit };
        assert_eq!(
            r.dispatch("enable-feature", &json!([]), &ctx),
            Ok(json!(""))
        );
        assert_eq!(
            r.dispatch("feature-show", &json!([]), &ctx),
            Ok(json!("on\n"))
        );
        assert_eq!(r.dispatch("exit", &json!([]), &ctx), Ok(json!("")));
        assert_eq!(exits.load(Ordering::SeqCst), 1);
    }
}
