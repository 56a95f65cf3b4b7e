//! The shape of the source tree, checked: data flows forward only.
//!
//! The crate's modules sit in layers, and a module imports only from the
//! layers below its own (and from itself):
//!
//! ```text
//! 5  report, fuzz                  a page of a dataset or a training run;
//!                                  the fuzz targets (a reader, run as a task)
//! 4  engine, inspect, train        run a pipeline; look at or train on a dataset
//! 3  pipeline                      the pipeline file, built
//! 2  config                        the pipeline file, parsed
//! 1  sources, stages, sinks        read, transform, write (never each other)
//! 0  error, rejects, schema, limits, dataset, codec, onnx, mixing,
//!    tokenize, augment, storage,   shared contracts, codecs, libraries,
//!    chart                         where bytes live (local paths, object
//!                                  stores) and charts
//! ```
//!
//! `inspect` and `train` read datasets through `dataset` alone: they import
//! nothing of layers 1 and 3 (no source, stage, sink or pipeline). `report`
//! reads them the same way, and a stage's own configuration type for what
//! the stage recorded (a spectrogram's axes from `mel_spectrogram`'s
//! settings, with its defaults).
//!
//! No file imports (through `crate::` or `super::` paths) a file that
//! imports it back, directly or around a circle; a `mod.rs` naming its own
//! submodules (the stage registry, re-exports) is the one exception. And
//! no file in `src/` is longer than `MAX_LINES`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;

fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "error" | "rejects" | "schema" | "limits" | "dataset" | "codec" | "onnx" | "mixing"
        | "tokenize" | "augment" | "storage" | "chart" | "simd" => 0,
        "sources" | "stages" | "sinks" => 1,
        "config" => 2,
        "pipeline" => 3,
        "engine" | "inspect" | "train" => 4,
        "report" | "fuzz" => 5,
        _ => return None,
    })
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` -> `["a", "b"]`; `src/a/mod.rs` -> `["a"]`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without its comments and its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module paths named in `code` through `crate::` and `super::`, resolved
/// against `here` (the file's module path; `is_mod` for a `mod.rs`).
/// Grouped imports (`use crate::a::{b, c::d}`) name each branch.
fn named_paths(code: &str, here: &[String], is_mod: bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for (anchor, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            let mut parent = here.to_vec();
            if !is_mod {
                parent.pop();
            }
            parent.pop();
            parent
        }),
    ] {
        let mut from = 0;
        while let Some(i) = code[from..].find(anchor) {
            let start = from + i;
            from = start + anchor.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let mut prefix = base.clone();
            let mut rest = &code[from..];
            // `super::super::x`
            while let Some(r) = rest.strip_prefix("super::") {
                prefix.pop();
                rest = r;
            }
            collect(rest, prefix, &mut out);
        }
    }
    out
}

/// Read a path (`a::b::C`, or `a::{b, c::D}`) from the start of `rest`.
fn collect(rest: &str, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut rest = rest;
    loop {
        if let Some(r) = rest.strip_prefix('{') {
            let end = matching_brace(r);
            for branch in split_top(&r[..end]) {
                collect(branch.trim(), prefix.clone(), out);
            }
            return;
        }
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            out.push(prefix);
            return;
        }
        prefix.push(ident.clone());
        rest = &rest[ident.len()..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => {
                out.push(prefix);
                return;
            }
        }
    }
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|b| !b.trim().is_empty()).collect()
}

struct Tree {
    /// Module path of each file.
    files: BTreeMap<Vec<String>, PathBuf>,
    /// Module paths each file names.
    named: BTreeMap<Vec<String>, Vec<Vec<String>>>,
}

fn tree() -> Tree {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    let mut files = BTreeMap::new();
    let mut named = BTreeMap::new();
    for path in paths {
        if path.ends_with("main.rs") || path.ends_with("lib.rs") {
            continue;
        }
        let module = module_path(&path);
        let is_mod = path.ends_with("mod.rs");
        let text = std::fs::read_to_string(&path).unwrap();
        named.insert(module.clone(), named_paths(&code(&text), &module, is_mod));
        files.insert(module, path);
    }
    Tree { files, named }
}

impl Tree {
    /// The file a named path lives in: its longest prefix that is a file.
    fn file_of(&self, path: &[String]) -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| self.files.contains_key(p))
    }
}

#[test]
fn modules_import_only_from_the_layers_below() {
    let t = tree();
    let mut wrong = BTreeSet::new();
    for (module, named) in &t.named {
        let from = &module[0];
        let Some(from_layer) = layer(from) else {
            wrong.insert(format!("src/{} is in no layer", module.join("/")));
            continue;
        };
        for path in named {
            let Some(to) = path.first() else { continue };
            if to == from {
                continue;
            }
            let Some(to_layer) = layer(to) else { continue };
            let reader = matches!(from.as_str(), "inspect" | "train");
            let ok = (to_layer < from_layer || (to_layer == 0 && from_layer == 0))
                && !(reader && matches!(to_layer, 1 | 3));
            if !ok {
                wrong.insert(format!(
                    "{} (layer {from_layer}) imports crate::{} (layer {to_layer})",
                    t.files[module].strip_prefix(src()).unwrap().display(),
                    path.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn no_file_imports_around_a_circle() {
    let t = tree();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, named) in &t.named {
        let is_mod = t.files[module].ends_with("mod.rs");
        for path in named {
            let Some(to) = t.file_of(path) else { continue };
            // A mod.rs naming its own submodules.
            let own_child = is_mod && to.len() > module.len() && to.starts_with(module);
            if to != *module && !own_child {
                edges.entry(module.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    let mut circle = stack[at..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                0 => {
                    if let Some(c) = visit(next, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in t.files.keys() {
        if state.get(node).copied().unwrap_or(0) == 0
            && let Some(circle) = visit(node, &edges, &mut state, &mut Vec::new())
        {
            let names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
            panic!(
                "files import each other around a circle: {}",
                names.join(" -> ")
            );
        }
    }
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    let mut long: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > MAX_LINES)
                .then(|| format!("{} ({n} lines)", p.strip_prefix(src()).unwrap().display()))
        })
        .collect();
    long.sort();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}
