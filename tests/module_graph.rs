//! The house rule of issue 13: inside every crate, no two modules import each other, and no
//! longer ring of sibling modules does either (a → b → c → a), so each module can be read,
//! moved and tested with only what it depends on. Crates cannot form cycles (cargo refuses);
//! this checks the modules inside each crate.
//!
//! The check reads the sources: every `crate::…` and `super::…` path outside comments and
//! outside `#[cfg(test)]` items (tests may reach anywhere), resolved to the two sibling
//! modules it connects (`reconcile::task` using `super::diff` is an edge from
//! `reconcile::task` to `reconcile::diff`; a module using its own children is not an edge
//! between siblings). A path through a re-export counts where it is written, which is what a
//! reader sees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Sibling edges of one crate: module path → module paths it uses.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file (`reconcile/mod.rs` → `["reconcile"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The code of a file without comments, string literals and `#[cfg(test)]` items.
fn code_without_tests(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to the `;` or the `}` that closes its first `{`.
            let mut depth = 0i32;
            let mut opened = false;
            for next in lines.by_ref() {
                let code = next.split("//").next().unwrap_or("");
                for c in code.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        // Drop string literals so a message mentioning `crate::x` is not an import.
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.split(" //").next().unwrap_or("").chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every path written as `crate::a::b` or `super::…::x`, with `{…}` groups expanded one level
/// (`crate::{a::X, b}` → `crate::a::X`, `crate::b`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let boundary = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        let head = if rest.starts_with("crate::") {
            Some("crate")
        } else if rest.starts_with("super::") {
            Some("super")
        } else {
            None
        };
        let Some(head) = head.filter(|_| boundary) else {
            i += 1;
            continue;
        };
        // Read `head::seg::seg…`, stopping at `{` (a group) or anything else.
        let mut j = i + head.len();
        let mut segs = vec![head.to_string()];
        let mut group = None;
        while j + 1 < bytes.len() && bytes[j] == ':' && bytes[j + 1] == ':' {
            j += 2;
            if bytes.get(j) == Some(&'{') {
                let mut depth = 0;
                let start = j + 1;
                while j < bytes.len() {
                    match bytes[j] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                group = Some(bytes[start..j.min(bytes.len())].iter().collect::<String>());
                break;
            }
            let start = j;
            while j < bytes.len() && (bytes[j].is_alphanumeric() || bytes[j] == '_') {
                j += 1;
            }
            if start == j {
                break;
            }
            segs.push(bytes[start..j].iter().collect());
        }
        match group {
            Some(group) => {
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars().chain(std::iter::once(',')) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if c == ',' && depth == 0 {
                        let first = item.trim().split("::").next().unwrap_or("").trim();
                        if !first.is_empty() && first != "self" {
                            let mut p = segs.clone();
                            p.push(first.to_string());
                            found.push(p);
                        }
                        item.clear();
                    } else {
                        item.push(c);
                    }
                }
            }
            None => found.push(segs),
        }
        i = j.max(i + 1);
    }
    found
}

/// The module a path starts in, as an absolute module path (`super::super::x` from `a::b::c`
/// → `["a", "x"]`); None when it names nothing below the crate root.
fn resolve(from: &[String], path: &[String]) -> Option<Vec<String>> {
    let (mut base, rest) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("super") => {
            let mut base = from.to_vec();
            base.pop()?;
            let mut rest = &path[1..];
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            (base, rest)
        }
        _ => return None,
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

fn graph_of(crate_dir: &Path) -> Graph {
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let from = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        for path in paths(&code_without_tests(&text)) {
            let Some(target) = resolve(&from, &path) else {
                continue;
            };
            // The two siblings the edge connects: below their common parent.
            let common = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < from.len() && common < target.len() {
                let a = from[..=common].join("::");
                let b = target[..=common].join("::");
                let rel = file.strip_prefix(crate_dir).unwrap().display().to_string();
                graph.entry(a).or_default().entry(b).or_insert(rel);
            }
        }
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let i = w.index.len();
        w.index.insert(v, i);
        w.low.insert(v, i);
        w.stack.push(v);
        w.on_stack.insert(v);
        let graph = w.graph;
        for next in graph.get(v).into_iter().flat_map(|m| m.keys()) {
            let next = next.as_str();
            if !w.index.contains_key(next) {
                visit(w, next);
                let l = w.low[next].min(w.low[v]);
                w.low.insert(v, l);
            } else if w.on_stack.contains(next) {
                let l = w.index[next].min(w.low[v]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(m) = w.stack.pop() {
                w.on_stack.remove(m);
                component.push(m.to_string());
                if m == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut w = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.found
}

#[test]
fn no_modules_of_a_crate_import_each_other() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 10,
        "expected twill's crates under {}",
        crates.display()
    );
    let mut problems = Vec::new();
    let mut edges = 0;
    for dir in &dirs {
        let graph = graph_of(dir);
        edges += graph.values().map(BTreeMap::len).sum::<usize>();
        for ring in cycles(&graph) {
            let how: Vec<String> = ring
                .iter()
                .flat_map(|a| {
                    let graph = &graph;
                    let ring = &ring;
                    graph[a]
                        .iter()
                        .filter(move |(b, _)| ring.contains(b))
                        .map(move |(b, file)| format!("{a} → {b} ({file})"))
                })
                .collect();
            problems.push(format!(
                "{}: {} import each other: {}",
                dir.file_name().unwrap().to_string_lossy(),
                ring.join(", "),
                how.join("; ")
            ));
        }
    }
    // The reader must see the imports at all, or the check proves nothing.
    assert!(edges > 100, "only {edges} imports between modules found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_mutual_imports_and_groups() {
    let from = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let code = code_without_tests(
        "use crate::{a::X, b};\n// use crate::c;\nlet s = \"crate::d\";\n\
         #[cfg(test)]\nmod tests {\n    use crate::e;\n}\nuse super::f::G;\n",
    );
    let found: Vec<String> = paths(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["crate::a", "crate::b", "super::f::G"]);
    assert_eq!(
        resolve(&from("x::y::z"), &from("super::super::w")),
        Some(from("x::w"))
    );
    let mut graph = Graph::new();
    graph
        .entry("a".into())
        .or_default()
        .insert("b".into(), "a.rs".into());
    graph
        .entry("b".into())
        .or_default()
        .insert("c".into(), "b.rs".into());
    assert!(cycles(&graph).is_empty());
    graph
        .entry("c".into())
        .or_default()
        .insert("a".into(), "c.rs".into());
    assert_eq!(
        cycles(&graph),
        vec![from("a::b::c").into_iter().collect::<Vec<_>>()]
    );
}
