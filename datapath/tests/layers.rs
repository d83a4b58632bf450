//! The datapath's modules depend only downward, and no module imports
//! itself back through others.
//!
//! This test parses every `datapath/src/**/*.rs` (with `syn`, the `bin/`
//! shell excepted), resolves every `crate::`, `super::` and `self::` path it
//! finds (in `use` trees, in code, and in macro arguments) to the file module
//! that defines it, and builds two graphs:
//! - the graph of top-level modules (`flow`, `pipeline`, `conntrack`, ...),
//!   which must be acyclic and must respect [`LAYERS`]: a module imports only
//!   modules of its own layer or of a lower one;
//! - the graph of file modules (`pipeline::flow`, `flow::tables`, ...), which
//!   must be acyclic too. A parent module's own use of its children
//!   (`pub use child::Item`, `mod.rs` code calling into a child) is
//!   containment, not a dependency, and is left out of it.
//!
//! Test-only code (items under `#[cfg(test)]`, and the files such items
//! declare) is left out: a test may drive its module through a higher layer.
//! A path through a re-export (`super::Item` where the parent re-exports a
//! sibling's item) counts as a use of the parent. `LAYERS_DUMP=1` prints
//! the top-level graph; `LAYERS_SRC=DIR` checks another source tree.
//! A failure prints each cycle with the paths that form it, or each import
//! that goes up the layer table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The layers, bottom up. A top-level module may import modules of its own
/// layer (if that makes no cycle) and of the layers below it. Every
/// top-level module of the crate must be listed.
const LAYERS: &[(&str, &[&str])] = &[
    ("time", &["time"]),
    ("wire formats", &["wire"]),
    (
        "control-socket infrastructure (each feature registers its commands)",
        &["ctl"],
    ),
    ("drop reasons and counters", &["drop", "stats"]),
    (
        "packet buffers, ports and their memory",
        &["packet", "port", "dpdk", "hugepages"],
    ),
    ("flow program", &["flow"]),
    ("classifier", &["classifier"]),
    ("pipeline", &["pipeline"]),
    (
        "features",
        &[
            "conntrack",
            "service",
            "tunnel",
            "neigh",
            "stack",
            "hostpath",
            "capture",
        ],
    ),
    ("poll-mode threads and configuration", &["pmd", "config"]),
    ("daemon", &["daemon", "caps"]),
];

/// One file module: its path in the crate and its source text.
struct Source {
    module: Vec<String>,
    file: PathBuf,
    text: String,
}

/// One dependency: `from` (a file module) names something in `to`.
#[derive(Clone)]
struct Use {
    from: Vec<String>,
    to: Vec<String>,
    /// The path as written after resolution, for the failure message.
    path: String,
    file: PathBuf,
}

fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().map(String::as_str) == Some("bin") {
        return None;
    }
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

fn read_sources(src: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read datapath/src") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if let Some(module) = module_of(src, &path) {
                    let text = std::fs::read_to_string(&path).expect("read a source file");
                    out.push(Source {
                        module,
                        file: path.strip_prefix(src).unwrap().to_path_buf(),
                        text,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && {
            let s = a.meta.require_list().map(|l| l.tokens.to_string());
            s.is_ok_and(|s| {
                s.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|w| w == "test")
            })
        }
    })
}

/// Walks one file, collecting the paths it names and the files it declares
/// as test-only.
struct Collector<'a> {
    /// The module the visited code is in (file module plus inline modules).
    module: Vec<String>,
    file_module: &'a [String],
    /// Raw paths (segments, first one `crate`, `super` or `self`) with the
    /// module they were written in.
    paths: Vec<(Vec<String>, Vec<String>)>,
    test_files: Vec<Vec<String>>,
}

impl Collector<'_> {
    fn record(&mut self, segments: Vec<String>) {
        if matches!(
            segments.first().map(String::as_str),
            Some("crate" | "super" | "self")
        ) {
            self.paths.push((self.module.clone(), segments));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.record(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.record(full);
            }
            syn::UseTree::Glob(_) => self.record(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// Paths inside macro arguments are token streams to `syn`; find the
    /// `crate::a::b` and `super::a` runs in them.
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let flat = flatten(tokens);
        let mut i = 0;
        while i < flat.len() {
            if let Tok::Ident(first) = &flat[i] {
                let starts = matches!(first.as_str(), "crate" | "super" | "self");
                let after_dollar = i > 0 && matches!(&flat[i - 1], Tok::Dollar);
                if starts && !after_dollar {
                    let mut segs = vec![first.clone()];
                    let mut j = i + 1;
                    while j + 2 < flat.len()
                        && matches!(flat[j], Tok::Colon)
                        && matches!(flat[j + 1], Tok::Colon)
                    {
                        match &flat[j + 2] {
                            Tok::Ident(s) => segs.push(s.clone()),
                            _ => break,
                        }
                        j += 3;
                    }
                    if segs.len() > 1 {
                        self.record(segs);
                    }
                    i = j;
                    continue;
                }
            }
            i += 1;
        }
    }
}

enum Tok {
    Ident(String),
    Colon,
    Dollar,
    Other,
}

fn flatten(tokens: proc_macro2::TokenStream) -> Vec<Tok> {
    let mut out = Vec::new();
    for t in tokens {
        match t {
            proc_macro2::TokenTree::Group(g) => {
                out.push(Tok::Other);
                out.extend(flatten(g.stream()));
                out.push(Tok::Other);
            }
            proc_macro2::TokenTree::Ident(i) => out.push(Tok::Ident(i.to_string())),
            proc_macro2::TokenTree::Punct(p) if p.as_char() == ':' => out.push(Tok::Colon),
            proc_macro2::TokenTree::Punct(p) if p.as_char() == '$' => out.push(Tok::Dollar),
            _ => out.push(Tok::Other),
        }
    }
    out
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => &[],
        };
        if is_cfg_test(attrs) {
            if let syn::Item::Mod(m) = item {
                if m.content.is_none() {
                    let mut child = self.file_module.to_vec();
                    child.push(m.ident.to_string());
                    self.test_files.push(child);
                }
            }
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.module.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.module.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.record(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// Resolves `segments` written in `module` to an absolute path.
fn resolve(module: &[String], segments: &[String]) -> Vec<String> {
    let mut base: Vec<String>;
    let mut rest = segments;
    match segments[0].as_str() {
        "crate" => {
            base = Vec::new();
            rest = &segments[1..];
        }
        _ => {
            base = module.to_vec();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "self" => {}
                    "super" => {
                        base.pop();
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
    }
    base.extend(rest.iter().cloned());
    base
}

/// The file module that defines `path`: its longest prefix that is a file.
fn owner(files: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains(p))
        .unwrap_or_default()
}

/// Every dependency between file modules of `sources` (test code excluded).
fn dependencies(sources: &[Source]) -> Vec<Use> {
    let files: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut test_files: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut raw = Vec::new();
    for s in sources {
        let ast = syn::parse_file(&s.text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", s.file.display()));
        let mut c = Collector {
            module: s.module.clone(),
            file_module: &s.module,
            paths: Vec::new(),
            test_files: Vec::new(),
        };
        c.visit_file(&ast);
        test_files.extend(c.test_files);
        raw.push((s, c.paths));
    }
    let mut out = Vec::new();
    for (s, paths) in raw {
        if test_files.iter().any(|t| s.module.starts_with(t)) {
            continue;
        }
        for (module, segments) in paths {
            let abs = resolve(&module, &segments);
            let to = owner(&files, &abs);
            if to.is_empty() || to == s.module {
                continue;
            }
            out.push(Use {
                from: s.module.clone(),
                to,
                path: format!("crate::{}", abs.join("::")),
                file: s.file.clone(),
            });
        }
    }
    out
}

/// A graph with, per edge, the first use that made it.
type Graph = BTreeMap<String, BTreeMap<String, Use>>;

/// Strongly connected components with more than one node (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn connect<'g>(st: &mut State<'g>, v: &'g str) {
        st.index.insert(v, st.next);
        st.low.insert(v, st.next);
        st.next += 1;
        st.stack.push(v);
        st.on_stack.insert(v);
        let graph = st.graph;
        for w in graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !st.index.contains_key(w) {
                connect(st, w);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if st.on_stack.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on_stack.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                st.out.push(scc);
            }
        }
    }
    let mut st = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(a, e)| std::iter::once(a.as_str()).chain(e.keys().map(String::as_str)))
        .collect();
    for v in nodes {
        if !st.index.contains_key(v) {
            connect(&mut st, v);
        }
    }
    st.out
}

/// One shortest cycle through `start` inside `scc`, as the uses that form it.
fn cycle_through(graph: &Graph, scc: &[String], start: &str) -> Vec<Use> {
    let inside: BTreeSet<&str> = scc.iter().map(String::as_str).collect();
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !inside.contains(w) {
                continue;
            }
            if w == start {
                let mut chain = vec![graph[v][w].clone()];
                let mut at = v;
                while at != start {
                    let p = prev[at];
                    chain.push(graph[p][at].clone());
                    at = p;
                }
                chain.reverse();
                return chain;
            }
            if !prev.contains_key(w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    Vec::new()
}

fn describe_cycles(title: &str, graph: &Graph) -> String {
    let mut out = String::new();
    for scc in cycles(graph) {
        let _ = writeln!(out, "{title} cycle among {{{}}}:", scc.join(", "));
        for u in cycle_through(graph, &scc, &scc[0]) {
            let _ = writeln!(
                out,
                "    {} -> {}    ({} names {})",
                u.from.join("::"),
                u.to.join("::"),
                u.file.display(),
                u.path
            );
        }
    }
    out
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// Everything wrong with the layering of `sources`, or an empty string.
fn check(sources: &[Source]) -> String {
    let deps = dependencies(sources);
    let mut top: Graph = BTreeMap::new();
    let mut files: Graph = BTreeMap::new();
    for u in &deps {
        let (a, b) = (&u.from[0], &u.to[0]);
        if a != b {
            top.entry(a.clone())
                .or_default()
                .entry(b.clone())
                .or_insert_with(|| u.clone());
        }
        // A parent naming its own descendants is containment.
        if !u.to.starts_with(&u.from) {
            files
                .entry(u.from.join("::"))
                .or_default()
                .entry(u.to.join("::"))
                .or_insert_with(|| u.clone());
        }
    }
    let mut out = String::new();
    if std::env::var_os("LAYERS_DUMP").is_some() {
        for (a, edges) in &top {
            let names: Vec<&str> = edges.keys().map(String::as_str).collect();
            println!("{a} -> {}", names.join(", "));
        }
    }
    let modules: BTreeSet<&String> = sources.iter().filter_map(|s| s.module.first()).collect();
    for m in modules {
        if layer_of(m).is_none() {
            let _ = writeln!(
                out,
                "top-level module `{m}` is in no layer of LAYERS: place it"
            );
        }
    }
    out.push_str(&describe_cycles("module", &top));
    out.push_str(&describe_cycles("file-module", &files));
    for (a, edges) in &top {
        for (b, u) in edges {
            if let (Some(la), Some(lb)) = (layer_of(a), layer_of(b)) {
                if la < lb {
                    let _ = writeln!(
                        out,
                        "`{a}` ({}) imports the higher layer `{b}` ({}): {} names {}",
                        LAYERS[la].0,
                        LAYERS[lb].0,
                        u.file.display(),
                        u.path
                    );
                }
            }
        }
    }
    out
}

#[test]
fn datapath_modules_depend_only_downward() {
    // LAYERS_SRC points the check at another tree (e.g. an older checkout).
    let src = std::env::var_os("LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let sources = read_sources(&src);
    assert!(
        sources.len() > 50,
        "found only {} files under {}",
        sources.len(),
        src.display()
    );
    let problems = check(&sources);
    assert!(
        problems.is_empty(),
        "the datapath's layering is broken:\n{problems}"
    );
}

fn source(module: &str, text: &str) -> Source {
    let module: Vec<String> = module
        .split("::")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Source {
        file: PathBuf::from(format!("{}.rs", module.join("/"))),
        module,
        text: text.to_owned(),
    }
}

#[test]
fn the_check_finds_cycles_and_upward_imports() {
    let sources = [
        source("", "pub mod wire; pub mod flow; pub mod pipeline;"),
        source("wire", "pub struct Frame;"),
        source("flow", "pub mod tables; pub mod key;"),
        source("flow::key", "use crate::wire::Frame; pub struct Key;"),
        // flow::tables -> pipeline (up a layer) and pipeline -> flow::tables
        // make a cycle at both levels.
        source(
            "flow::tables",
            "use super::key::Key; fn f() { crate::pipeline::run(); }",
        ),
        source(
            "pipeline",
            "use crate::flow::{key::Key, tables};\npub fn run() {}",
        ),
        // Test code is not a dependency.
        source("wire::tests_only", ""),
    ];
    let problems = check(&sources);
    assert!(
        problems.contains("module cycle among {flow, pipeline}"),
        "{problems}"
    );
    assert!(
        problems.contains("file-module cycle among {flow::tables, pipeline}"),
        "{problems}"
    );
    assert!(
        problems.contains("`flow` (flow program) imports the higher layer `pipeline` (pipeline)"),
        "{problems}"
    );
    assert!(!problems.contains("wire ->"), "{problems}");

    let fixed = [
        source("", "pub mod wire; pub mod flow;"),
        source("wire", "#[cfg(test)] mod tests; pub struct Frame;"),
        source("wire::tests", "use crate::flow::key::Key;"),
        source("flow", "pub mod key;"),
        source(
            "flow::key",
            "use crate::wire::Frame; #[cfg(test)] mod t { use crate::flow; }",
        ),
    ];
    assert_eq!(check(&fixed), "");
}
