//! Pipeline files kiln must refuse before reading any data, as data: each
//! `tests/refusals/*.toml` begins with comments naming what the refusal
//! must say,
//!
//! ```toml
//! # key: stages[1].max_tokens
//! # line: 15
//! # message: stride (8) must be smaller
//! ```
//!
//! and `kiln run` on it must exit with 2 before writing anything, with an
//! error naming the file, that key, that line and a message containing the
//! fragment. Add a case by adding a file.

use crate::common::*;

/// The expectations in a refusal file's header.
struct Expect {
    key: String,
    line: usize,
    message: String,
}

fn expect(path: &std::path::Path, text: &str) -> Expect {
    let field = |name: &str| {
        text.lines()
            .map_while(|l| l.strip_prefix('#'))
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{}: no `# {name}:` line in its header", path.display()))
    };
    Expect {
        key: field("key"),
        line: field("line").parse().expect("a line number"),
        message: field("message"),
    }
}

#[test]
fn every_refusal_names_its_file_key_line_and_reason() {
    let dir = root().join("tests/refusals");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the refusal cases are found");
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let want = expect(path, &text);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("out");
        let o = kiln()
            .current_dir(root())
            .args([
                "run",
                path.to_str().unwrap(),
                "--output",
                dest.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let err = stderr(&o);
        let name = path.file_name().unwrap().to_string_lossy();
        let checks = [
            (o.status.code() == Some(2), "exit code 2".to_string()),
            (!dest.exists(), "nothing written".to_string()),
            (err.contains(name.as_ref()), format!("the file {name}")),
            (
                err.contains(&format!("key `{}`", want.key)),
                format!("key `{}`", want.key),
            ),
            (
                err.contains(&format!("line {}", want.line)),
                format!("line {}", want.line),
            ),
            (err.contains(&want.message), format!("`{}`", want.message)),
        ];
        for (ok, what) in checks {
            if !ok {
                failures.push(format!("{name}: expected {what} in:\n{err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
