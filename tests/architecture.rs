//! The shape of the source tree, checked from the source itself.
//!
//! - **Imports run one way.** The module graph, built from every `use` line
//!   and every `crate::`, `super::` and `self::` path in non-test code, has
//!   no cycle. A name a module re-exports or imports counts as a dependency
//!   on the module that defines it, so `protocol` re-exporting
//!   `outcome::Result` does not make `coalesce → protocol → coalesce`. A
//!   re-export (`pub use`, `pub(crate) use`) is a module's interface, not
//!   a use of the module it names: it is followed, never an edge itself.
//!   Names a glob import (`use x::*`) brings in are not followed: a private
//!   glob import is an edge to `x`.
//! - **One idea per file.** No non-test source file is over
//!   [`FILE_LINES_MAX`] lines, except the files still listed in
//!   [`OVER_SIZE`], each of which may only shrink.
//! - **The protocol in one sitting.** docs/protocol.md's walk through one
//!   action ("Reading the code") names at most [`WALK_FILES_MAX`] files,
//!   each of which exists and holds the item the walk starts from.
//!
//! Test modules (`tests.rs`, `*_tests.rs`, files under a `tests/` folder and
//! `#[cfg(test)]` items) are left out: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Most lines a source file holds.
const FILE_LINES_MAX: usize = 500;

/// Files over [`FILE_LINES_MAX`] lines when the limit came in, with the
/// lines each had: each may shrink, none may grow, and one at or under the
/// limit must leave this list. Empty now: keep it so.
const OVER_SIZE: &[(&str, usize)] = &[];

/// Most files the walk through one action, claim to prune, may name.
const WALK_FILES_MAX: usize = 8;

#[test]
fn the_walk_through_one_action_names_at_most_eight_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/protocol.md")).expect("read docs/protocol.md");
    let section = doc
        .split("## Reading the code")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/protocol.md has a section \"Reading the code\"");
    // Each step of the walk: "N. `path`", then the items to start from in
    // backquotes before the first full stop or colon after the path.
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for line in section.lines() {
        let Some((number, rest)) = line.split_once(". `") else {
            continue;
        };
        if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Some((path, after)) = rest.split_once('`') else {
            continue;
        };
        files.push(path.to_string());
        let Ok(text) = fs::read_to_string(root.join(path)) else {
            problems.push(format!("{path}: named by the walk, but there is no such file"));
            continue;
        };
        if let Some(item) = after.strip_prefix(", `").and_then(|a| a.split('`').next()) {
            let defined = ["fn ", "struct ", "enum "]
                .iter()
                .any(|k| text.contains(&format!("{k}{item}")));
            if !defined {
                problems.push(format!(
                    "{path}: the walk starts from `{item}`, which it does not define"
                ));
            }
        }
    }
    assert!(
        !files.is_empty(),
        "the walk names no file: is it still a numbered list of \"N. `path`\"?"
    );
    if files.len() > WALK_FILES_MAX {
        problems.push(format!(
            "the walk names {} files, more than {WALK_FILES_MAX}: {}",
            files.len(),
            files.join(", ")
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn imports_run_one_way() {
    let graph = Graph::of(&read_tree(&src_dir()));
    // The checker sees the code: the protocol is written against the store.
    assert!(
        graph.edges.get("protocol").is_some_and(|to| to.contains_key("store")),
        "the module graph lost the edge protocol -> store: {:?}",
        graph.edges.keys().collect::<Vec<_>>()
    );
    let cycles = graph.cycles();
    assert!(
        cycles.is_empty(),
        "import cycles between modules (each line: module -> module it imports, via which path):\n{}",
        cycles.join("\n\n")
    );
}

#[test]
fn source_files_hold_at_most_the_line_limit() {
    let mut problems = Vec::new();
    let listed: BTreeMap<&str, usize> = OVER_SIZE.iter().copied().collect();
    for (rel, text) in read_tree(&src_dir()) {
        if is_test_file(&rel) || rel.starts_with("store/contract/") {
            continue;
        }
        let lines = text.lines().count();
        match listed.get(rel.as_str()) {
            Some(&was) if lines > was => {
                problems.push(format!("{rel}: {lines} lines, more than the {was} it had; split it"))
            }
            Some(_) if lines <= FILE_LINES_MAX => problems.push(format!(
                "{rel}: {lines} lines, within {FILE_LINES_MAX} now: remove it from OVER_SIZE"
            )),
            Some(_) => {}
            None if lines > FILE_LINES_MAX => {
                problems.push(format!("{rel}: {lines} lines, over {FILE_LINES_MAX}; split it by idea"))
            }
            None => {}
        }
    }
    for (rel, _) in OVER_SIZE {
        if !src_dir().join(rel).exists() {
            problems.push(format!("{rel}: listed in OVER_SIZE but gone: remove it"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, by path relative to it with `/`.
fn read_tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("reading {}: {e}", d.display())).path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>();
                let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                out.push((rel.join("/"), text));
            }
        }
    }
    out.sort();
    out
}

/// Test code: a `tests.rs`, or any file under a `tests` folder.
fn is_test_file(rel: &str) -> bool {
    let parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
    parts.contains(&"tests") || parts.last().is_some_and(|name| name.ends_with("_tests"))
}

/// The module a file defines: `store/mod.rs` is `store`, `lib.rs` the root
/// (empty), `main.rs` the binary (`main`).
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if rel == "main.rs" {
        return vec!["main".into()];
    }
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The module graph of a crate's non-test code.
struct Graph {
    /// Module → (module it depends on → the first path that made it so).
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

/// What one module's source says, once comments, literals and test items
/// are gone.
struct Module {
    path: Vec<String>,
    /// Child modules declared with `mod x;`.
    children: BTreeSet<String>,
    /// Every `use` path, expanded, with the name it brings in.
    uses: Vec<(String, Vec<String>)>,
    /// The paths of the private `use` lines (re-exports left out).
    used: Vec<Vec<String>>,
    /// Other paths written inline: `crate::a::b`, `super::x`, `child::y`.
    inline: Vec<Vec<String>>,
}

impl Graph {
    fn of(files: &[(String, String)]) -> Graph {
        let modules: Vec<Module> = files
            .iter()
            .filter(|(rel, _)| !is_test_file(rel))
            .map(|(rel, text)| Module::parse(module_of(rel), text))
            .collect();
        let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
        // Names each module brings into scope, to follow `super::Name` or
        // `crate::a::Name` to where `Name` is defined.
        let imports: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = modules
            .iter()
            .map(|m| {
                let names = m
                    .uses
                    .iter()
                    .filter_map(|(name, path)| Some((name.clone(), m.absolute(path)?)))
                    .collect();
                (m.path.clone(), names)
            })
            .collect();
        let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for m in &modules {
            let paths = m.used.iter().chain(m.inline.iter());
            for path in paths {
                let Some(full) = m.absolute(path) else { continue };
                let Some(target) = definer(&full, &known, &imports) else {
                    continue;
                };
                if target != m.path && !target.iter().any(|s| s == "tests") {
                    edges
                        .entry(name(&m.path))
                        .or_default()
                        .entry(name(&target))
                        .or_insert_with(|| path.join("::"));
                }
            }
        }
        Graph { edges }
    }

    /// Each cycle (a strongly connected component of more than one module),
    /// described with its edges.
    fn cycles(&self) -> Vec<String> {
        let nodes: Vec<&String> = self.edges.keys().collect();
        let mut tarjan = Tarjan {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            next: 0,
            components: Vec::new(),
        };
        for n in nodes {
            if !tarjan.index.contains_key(n.as_str()) {
                tarjan.visit(n);
            }
        }
        tarjan
            .components
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let set: BTreeSet<&str> = c.iter().map(String::as_str).collect();
                let mut lines = Vec::new();
                for from in &set {
                    for (to, via) in self.edges.get(*from).into_iter().flatten() {
                        if set.contains(to.as_str()) {
                            lines.push(format!("  {from} -> {to}   ({via})"));
                        }
                    }
                }
                lines.join("\n")
            })
            .collect()
    }
}

struct Tarjan<'a> {
    graph: &'a Graph,
    index: BTreeMap<String, usize>,
    low: BTreeMap<String, usize>,
    stack: Vec<String>,
    on_stack: BTreeSet<String>,
    next: usize,
    components: Vec<Vec<String>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: &str) {
        self.index.insert(v.to_string(), self.next);
        self.low.insert(v.to_string(), self.next);
        self.next += 1;
        self.stack.push(v.to_string());
        self.on_stack.insert(v.to_string());
        let graph = self.graph;
        for w in graph.edges.get(v).into_iter().flat_map(|e| e.keys()) {
            if !self.index.contains_key(w) {
                self.visit(w);
                let low = self.low[v].min(self.low[w]);
                self.low.insert(v.to_string(), low);
            } else if self.on_stack.contains(w) {
                let low = self.low[v].min(self.index[w]);
                self.low.insert(v.to_string(), low);
            }
        }
        if self.low[v] == self.index[v] {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack.remove(&w);
                let done = w == v;
                component.push(w);
                if done {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

fn name(path: &[String]) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

/// The module that defines what `full` names: the longest module prefix of
/// the path, followed through the names that module imports (a re-export,
/// or a parent's import a child reaches with `super::`).
fn definer(
    full: &[String],
    known: &BTreeSet<Vec<String>>,
    imports: &BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
) -> Option<Vec<String>> {
    let mut full = full.to_vec();
    // Re-exports chain only a few deep; the bound stops a chain that loops.
    for _ in 0..16 {
        let k = (0..=full.len()).rev().find(|&k| known.contains(&full[..k]))?;
        let module = full[..k].to_vec();
        match full.get(k).and_then(|next| imports.get(&module)?.get(next)) {
            Some(target) if target != &full[..=k] => {
                let mut next = target.clone();
                next.extend_from_slice(&full[k + 1..]);
                full = next;
            }
            _ => return Some(module),
        }
    }
    None
}

impl Module {
    fn parse(path: Vec<String>, text: &str) -> Module {
        let code = drop_test_items(&strip_comments_and_literals(text));
        let children = declared_children(&code);
        let (uses, used, rest) = take_uses(&code);
        let inline = inline_paths(&rest)
            .into_iter()
            .filter(|p| matches!(p[0].as_str(), "crate" | "super" | "self" | "ledgerd") || children.contains(&p[0]))
            .collect();
        Module {
            path,
            children,
            uses,
            used,
            inline,
        }
    }

    /// A path as written here, from the crate root; `None` for paths into
    /// other crates (std, tokio) or names already in scope.
    fn absolute(&self, path: &[String]) -> Option<Vec<String>> {
        let first = path.first()?;
        let mut base = match first.as_str() {
            "crate" | "ledgerd" => Vec::new(),
            "self" => self.path.clone(),
            "super" => {
                let mut base = self.path.clone();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend_from_slice(rest);
                return Some(base);
            }
            child if self.children.contains(child) => {
                let mut base = self.path.clone();
                base.extend_from_slice(path);
                return Some(base);
            }
            _ => return None,
        };
        base.extend_from_slice(&path[1..]);
        Some(base)
    }
}

/// The source with comments gone and string and char literals emptied, so
/// that a path in a doc comment or a message is not mistaken for code.
fn strip_comments_and_literals(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_char(b.get(i.wrapping_sub(1))) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (b.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x' or '\n'), not a lifetime.
            i += 1;
            while i < b.len() && b[i] != '\'' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The source without `#[cfg(test)]` items (up to their `;` or their
/// balanced `{ ... }`).
fn drop_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let after = &rest[at + MARK.len()..];
        let brace = after.find('{');
        let semi = after.find(';');
        let end = match (brace, semi) {
            (_, Some(s)) if brace.is_none_or(|b| s < b) => s + 1,
            (Some(b), _) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, ch) in after[b..].char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Names of the child modules declared in a file (`mod x;`).
fn declared_children(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for stmt in code.split([';', '{', '}']) {
        let words: Vec<&str> = stmt.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| *w == "mod") {
            let modifiers_only = words[..at]
                .iter()
                .all(|w| w.starts_with("pub") || w.starts_with('#') || w.ends_with(']') || w.ends_with(')'));
            if modifiers_only && at + 1 == words.len() - 1 {
                out.insert(words[at + 1].to_string());
            }
        }
    }
    out
}

/// Every `use` declaration, expanded to (name brought in, path); the paths
/// of the private ones; and the source without them.
type Uses = (Vec<(String, Vec<String>)>, Vec<Vec<String>>, String);

fn take_uses(code: &str) -> Uses {
    let mut uses = Vec::new();
    let mut used = Vec::new();
    let mut rest = String::new();
    let mut i = 0;
    while let Some(found) = find_word(code, "use", i) {
        let Some(end) = code[found..].find(';').map(|e| found + e) else {
            break;
        };
        rest.push_str(&code[i..found]);
        let tree: String = code[found + 3..end]
            .chars()
            .filter(|c| !c.is_whitespace() || *c == ' ')
            .collect();
        let mut these = Vec::new();
        expand(tree.trim(), &[], &mut these);
        if !is_re_export(&code[..found]) {
            used.extend(these.iter().map(|(_, p)| p.clone()));
        }
        uses.extend(these);
        i = end + 1;
    }
    rest.push_str(&code[i..]);
    (uses, used, rest)
}

/// Whether the `use` after `before` is a re-export: `pub use`, or
/// `pub(crate)`, `pub(super)`, `pub(in path)` use.
fn is_re_export(before: &str) -> bool {
    let before = before.trim_end();
    before.ends_with("pub")
        || (before.ends_with(')')
            && before
                .rsplit_once("pub(")
                .is_some_and(|(_, vis)| !vis.contains(['(', ';', '{', '}'])))
}

/// The next `word` at or after `from` standing alone as an identifier.
fn find_word(code: &str, word: &str, from: usize) -> Option<usize> {
    let mut from = from;
    while let Some(at) = code[from..].find(word).map(|a| from + a) {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        let alone = |c: Option<char>| !c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if alone(before) && alone(after) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands a use tree (`a::{b, c::{d as e}}`) under `prefix`.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<(String, Vec<String>)>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = segments(&tree[..open]);
        let body = tree[open + 1..].trim_end().trim_end_matches('}');
        let mut base = prefix.to_vec();
        base.extend(head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&body[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if !body[start..].trim().is_empty() {
            expand(&body[start..], &base, out);
        }
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p, Some(a.trim().to_string())),
        None => (tree, None),
    };
    let mut full = prefix.to_vec();
    full.extend(segments(path));
    if full.last().is_some_and(|s| s == "self") {
        full.pop();
    }
    let Some(last) = full.last().cloned() else { return };
    if last == "*" {
        full.pop();
        out.push((String::new(), full));
    } else {
        out.push((alias.unwrap_or(last), full));
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Paths of two or more segments written in code (`a::b::c`), without
/// generic arguments.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let starts = is_ident(chars[i])
            && (i == 0 || !(is_ident(chars[i - 1]) || (chars[i - 1] == ':' && i >= 2 && chars[i - 2] == ':')));
        if !starts {
            i += 1;
            continue;
        }
        let mut path = Vec::new();
        loop {
            let s = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            path.push(chars[s..i].iter().collect::<String>());
            if chars.get(i) == Some(&':')
                && chars.get(i + 1) == Some(&':')
                && chars.get(i + 2).is_some_and(|c| is_ident(*c))
            {
                i += 2;
            } else {
                break;
            }
        }
        if path.len() > 1 {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod checker {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect()
    }

    #[test]
    fn a_child_importing_its_parents_own_item_is_a_cycle() {
        let g = Graph::of(&files(&[
            ("lib.rs", "pub mod a;"),
            ("a/mod.rs", "mod b;\nuse b::helper;\npub struct Flow;"),
            ("a/b.rs", "use super::Flow;\npub fn helper() {}"),
        ]));
        assert_eq!(g.cycles().len(), 1, "{:?}", g.edges);
    }

    #[test]
    fn a_name_the_parent_re_exports_counts_for_its_definer() {
        let g = Graph::of(&files(&[
            ("lib.rs", "pub mod a;"),
            ("a/mod.rs", "mod b;\nmod c;\npub use c::Shared;\nuse b::helper;"),
            ("a/b.rs", "use crate::a::{Shared};\npub fn helper(_: Shared) {}"),
            ("a/c.rs", "pub struct Shared;"),
        ]));
        assert!(g.cycles().is_empty(), "{:?}", g.cycles());
        assert!(g.edges["a::b"].contains_key("a::c"), "{:?}", g.edges);
    }

    #[test]
    fn a_re_export_is_not_a_use_but_a_glob_import_is() {
        let g = Graph::of(&files(&[
            ("lib.rs", "pub mod a;"),
            ("a/mod.rs", "mod b;\npub(crate) use b::Thing;\npub struct Parent;"),
            ("a/b.rs", "use super::Parent;\npub struct Thing(Parent);"),
        ]));
        assert!(g.cycles().is_empty(), "{:?}", g.cycles());
        let g = Graph::of(&files(&[
            ("lib.rs", "pub mod a;"),
            ("a/mod.rs", "mod b;\nuse b::*;\npub struct Parent;"),
            ("a/b.rs", "use super::Parent;\npub struct Thing(Parent);"),
        ]));
        assert_eq!(g.cycles().len(), 1, "{:?}", g.edges);
    }

    #[test]
    fn inline_paths_count_and_comments_strings_and_tests_do_not() {
        let g = Graph::of(&files(&[
            ("lib.rs", "pub mod x;\npub mod y;"),
            ("x.rs", "pub fn f() { crate::y::g(); }"),
            (
                "y.rs",
                "/// see crate::x::f\npub fn g() { let _ = \"crate::x::f\"; }\n#[cfg(test)]\nmod t { fn h() { crate::x::f(); } }",
            ),
        ]));
        assert!(g.edges["x"].contains_key("y"));
        assert!(!g.edges.contains_key("y"), "{:?}", g.edges);
        let g = Graph::of(&files(&[
            ("lib.rs", "pub mod x;\npub mod y;"),
            ("x.rs", "pub fn f() { crate::y::g(); }"),
            ("y.rs", "pub fn g() { crate::x::f(); }"),
        ]));
        assert_eq!(g.cycles().len(), 1);
    }
}
