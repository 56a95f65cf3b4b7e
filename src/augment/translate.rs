//! Translators for back-translation, behind one trait, and the one that
//! drives a subprocess: Apertium's pipeline for a chain of language pairs,
//! or any command that speaks the same protocol.
//!
//! The protocol is Apertium's null-flush mode: a batch is one text a line
//! (newlines inside a text become spaces), then a NUL byte; the answer is
//! one line a text, then a NUL. Processes are kept in a pool and reused
//! across batches. A process that dies, times out or answers with the wrong
//! number of lines is killed and replaced, and the batch retried once; a
//! second failure is the batch's error, which the caller turns into
//! rejects.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Translates batches of texts; one output per input, in order. `Err` is a
/// failure of the whole batch.
pub trait Translator: Send + Sync {
    fn translate(&self, texts: &[String]) -> Result<Vec<String>, String>;
    /// What it is, for provenance and the run summary
    /// (`apertium eng-spa | spa-eng`).
    fn describe(&self) -> String;
}

/// Translators applied one after the other (there and back).
pub struct Chain(pub Vec<Box<dyn Translator>>);

impl Translator for Chain {
    fn translate(&self, texts: &[String]) -> Result<Vec<String>, String> {
        let mut texts = texts.to_vec();
        for t in &self.0 {
            texts = t.translate(&texts)?;
        }
        Ok(texts)
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|t| t.describe())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// A running translator process.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    out: Receiver<Vec<u8>>,
    /// The tail of its stderr, for error messages.
    err: Arc<Mutex<Vec<u8>>>,
}

impl Proc {
    fn kill(mut self) {
        // The process leads its own group: the whole pipeline goes.
        let pid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr_tail(&self) -> String {
        let e = self.err.lock().expect("not poisoned");
        String::from_utf8_lossy(&e).trim().to_string()
    }
}

/// A translator run as a subprocess speaking the null-flush protocol.
pub struct ProcessTranslator {
    /// `bash -c SCRIPT` for Apertium, the user's argv for a command.
    argv: Vec<String>,
    /// Escape Apertium's stream characters in, and drop the escapes out.
    apertium: bool,
    /// Keep the output as it comes (a tagger's stream format).
    raw_output: bool,
    description: String,
    timeout: Duration,
    pool: Mutex<Vec<Proc>>,
}

/// Characters Apertium's stream format reserves.
const APERTIUM_SPECIAL: &[char] = &[
    '^', '$', '[', ']', '/', '\\', '@', '*', '<', '>', '{', '}', '#', '~',
];

impl ProcessTranslator {
    /// Apertium translating through `pairs` in order (`eng-spa`, then
    /// `spa-eng`), with the modes in `dir` (Debian: /usr/share/apertium).
    /// Checks that the engine and every mode are installed and translates
    /// one probe sentence, so a missing pair fails before any data is read.
    pub fn apertium(dir: &Path, pairs: &[String], timeout: Duration) -> Result<Self, String> {
        let stages = pairs
            .iter()
            .map(|p| Ok(format!("( {} )", apertium_mode(dir, p)?.join(" | "))))
            .collect::<Result<Vec<_>, String>>()?;
        // $1: the generator's flag (-n: no unknown-word marks); $2: the
        // tagger's (none).
        let script = format!("set -- -n ''; {}", stages.join(" | "));
        let t = ProcessTranslator {
            argv: vec!["bash".into(), "-c".into(), script],
            apertium: true,
            raw_output: false,
            description: format!("apertium {}", pairs.join(" | ")),
            timeout,
            pool: Mutex::new(Vec::new()),
        };
        t.probe()?;
        Ok(t)
    }

    /// Apertium's morphological analyser and part-of-speech tagger, the
    /// first programs of the `pair` mode: each text comes back as Apertium's
    /// stream of lexical units with their surface forms
    /// (`^foxes/fox<n><pl>$`), see [`tagged_units`].
    pub fn apertium_tagger(dir: &Path, pair: &str, timeout: Duration) -> Result<Self, String> {
        let programs = apertium_mode(dir, pair)?;
        let Some(tagger) = programs
            .iter()
            .position(|p| p.trim_start().starts_with("apertium-tagger"))
        else {
            return Err(format!("the `{pair}` mode runs no apertium-tagger"));
        };
        let mut chain: Vec<String> = programs[..=tagger].to_vec();
        // $2 is the tagger's option: -p keeps each unit's surface form.
        chain[tagger] = chain[tagger].replace("$2", "-p");
        let t = ProcessTranslator {
            argv: vec!["bash".into(), "-c".into(), chain.join(" | ")],
            apertium: true,
            raw_output: true,
            description: format!("apertium tagger of {pair}"),
            timeout,
            pool: Mutex::new(Vec::new()),
        };
        t.probe()?;
        Ok(t)
    }

    /// Any command speaking the protocol; it is started and probed once.
    pub fn command(argv: Vec<String>, timeout: Duration) -> Result<Self, String> {
        if argv.is_empty() {
            return Err("the command is empty".into());
        }
        let t = ProcessTranslator {
            description: argv.join(" "),
            argv,
            apertium: false,
            raw_output: false,
            timeout,
            pool: Mutex::new(Vec::new()),
        };
        t.probe()?;
        Ok(t)
    }

    fn probe(&self) -> Result<(), String> {
        let out = self
            .translate(&["Hello.".to_string()])
            .map_err(|e| format!("the translator does not work: {e}"))?;
        if out.len() != 1 {
            return Err("the translator answered the probe with no line".into());
        }
        Ok(())
    }

    fn spawn(&self) -> Result<Proc, String> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", self.argv[0]))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let err = Arc::new(Mutex::new(Vec::new()));
        let tail = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().expect("not poisoned");
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(2048);
                t.drain(..excess);
            }
        });
        Ok(Proc {
            child,
            stdin,
            out,
            err,
        })
    }

    fn encode(&self, texts: &[String]) -> Vec<u8> {
        encode_stream(texts, self.apertium)
    }

    fn decode(&self, answer: &[u8], n: usize) -> Result<Vec<String>, String> {
        decode_stream(answer, n, self.apertium, self.raw_output)
    }

    /// One exchange with `p`.
    fn exchange(&self, p: &mut Proc, texts: &[String]) -> Result<Vec<String>, String> {
        let died = |p: &Proc, what: &str| {
            let tail = p.stderr_tail();
            match tail.is_empty() {
                true => what.to_string(),
                false => format!("{what}: {tail}"),
            }
        };
        p.stdin
            .write_all(&self.encode(texts))
            .and_then(|_| p.stdin.flush())
            .map_err(|e| died(p, &format!("the translator stopped reading ({e})")))?;
        let deadline = Instant::now() + self.timeout;
        let mut answer = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.out.recv_timeout(left) {
                Ok(chunk) => {
                    answer.extend_from_slice(&chunk);
                    if answer.last() == Some(&0) {
                        answer.pop();
                        return self.decode(&answer, texts.len());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "the translator gave no answer in {} s",
                        self.timeout.as_secs()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Let the stderr reader catch up before reporting.
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(died(p, "the translator exited"));
                }
            }
        }
    }
}

impl Translator for ProcessTranslator {
    fn translate(&self, texts: &[String]) -> Result<Vec<String>, String> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut first_error = None;
        for _attempt in 0..2 {
            let pooled = self.pool.lock().expect("not poisoned").pop();
            let mut p = match pooled {
                Some(p) => p,
                None => self.spawn()?,
            };
            match self.exchange(&mut p, texts) {
                Ok(out) => {
                    self.pool.lock().expect("not poisoned").push(p);
                    return Ok(out);
                }
                Err(e) => {
                    tracing::warn!(translator = %self.description, error = %e, "restarting the translator");
                    p.kill();
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(format!(
            "{} (restarted and retried once)",
            first_error.expect("two failures")
        ))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

impl Drop for ProcessTranslator {
    fn drop(&mut self) {
        for p in self.pool.get_mut().expect("not poisoned").drain(..) {
            p.kill();
        }
    }
}

/// The programs of Apertium's `pair` mode in `dir`, each with null-flush
/// on; an error naming the installed pairs when there is no such mode.
fn apertium_mode(dir: &Path, pair: &str) -> Result<Vec<String>, String> {
    let mode: PathBuf = dir.join("modes").join(format!("{pair}.mode"));
    if !mode.exists() {
        let mut have: Vec<String> = std::fs::read_dir(dir.join("modes"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".mode"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        have.sort();
        return Err(format!(
            "Apertium has no `{pair}` pair: {} does not exist (installed pairs: {}; Debian packages them as apertium-LANG-LANG)",
            mode.display(),
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            }
        ));
    }
    // The mode file with null-flush flags on every program.
    let out = Command::new("apertium-wblank-mode")
        .arg("-z")
        .arg(&mode)
        .output()
        .map_err(|e| {
            format!("cannot run apertium-wblank-mode ({e}): is Apertium installed (Debian package `apertium`)?")
        })?;
    if !out.status.success() {
        return Err(format!(
            "apertium-wblank-mode failed on {}: {}",
            mode.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(" | ")
        .map(str::to_string)
        .collect())
}

/// One lexical unit of a tagger's output: its surface form (escapes
/// removed) and the first tag of its analysis (`n`, `vblex`, `adj`...),
/// `None` for a word the analyser does not know.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub surface: String,
    pub tag: Option<String>,
}

/// The lexical units of one line of `apertium-tagger -p` output
/// (`^foxes/fox<n><pl>$ ^zebra/*zebra$`).
pub fn tagged_units(line: &str) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut chars = line.chars();
    // Outside a unit: skip to the next unescaped `^`.
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '^' => {
                let mut surface = String::new();
                // The first tag of the analysis, between unescaped `<` and
                // `>` (an escaped one belongs to the lemma); `None` while
                // none is open or after the unit is unknown (`/*`).
                let (mut in_analysis, mut unknown, mut analysis_len) = (false, false, 0);
                let (mut tag, mut tag_open, mut tag_done) = (String::new(), false, false);
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            let Some(n) = chars.next() else { break };
                            match in_analysis {
                                true if tag_open => tag.push(n),
                                true => analysis_len += 1,
                                false => surface.push(n),
                            }
                        }
                        '$' => break,
                        '/' if !in_analysis => in_analysis = true,
                        c if in_analysis => {
                            unknown |= analysis_len == 0 && c == '*';
                            analysis_len += 1;
                            match c {
                                '<' if !tag_done && !tag_open => tag_open = true,
                                '>' if tag_open => (tag_open, tag_done) = (false, true),
                                c if tag_open => tag.push(c),
                                _ => {}
                            }
                        }
                        c => surface.push(c),
                    }
                }
                let tag = (!unknown && tag_done).then_some(tag);
                units.push(Unit { surface, tag });
            }
            _ => {}
        }
    }
    units
}

/// A batch as the translator reads it: one line a text (line breaks and
/// NULs become spaces), Apertium's special characters escaped when
/// `apertium`, then the NUL that flushes it.
pub fn encode_stream(texts: &[String], apertium: bool) -> Vec<u8> {
    let mut buf = String::new();
    for t in texts {
        for c in t.chars() {
            match c {
                '\n' | '\r' | '\0' => buf.push(' '),
                c if apertium && APERTIUM_SPECIAL.contains(&c) => {
                    buf.push('\\');
                    buf.push(c);
                }
                c => buf.push(c),
            }
        }
        buf.push('\n');
    }
    let mut bytes = buf.into_bytes();
    bytes.push(0);
    bytes
}

/// The `n` texts of a translator's answer (without its NUL), trimmed, with
/// Apertium's escapes removed unless `raw` (a tagger's stream format).
pub fn decode_stream(
    answer: &[u8],
    n: usize,
    apertium: bool,
    raw: bool,
) -> Result<Vec<String>, String> {
    let text = String::from_utf8_lossy(answer);
    let mut lines: Vec<&str> = text.split('\n').collect();
    // Each text ends with a newline: the last piece is empty.
    if lines.last() == Some(&"") {
        lines.pop();
    }
    if lines.len() != n {
        return Err(format!(
            "the translator answered {} lines for {n} texts",
            lines.len()
        ));
    }
    Ok(lines
        .into_iter()
        .map(|l| match (apertium, raw) {
            (true, false) => unescape(l.trim()),
            _ => l.trim().to_string(),
        })
        .collect())
}

/// Apertium's output with its escapes removed.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["bash".into(), "-c".into(), script.into()]
    }

    /// Echoes each batch back upper-cased, with the NUL.
    const UPPER: &str = r#"while IFS= read -r -d '' batch; do printf '%s\0' "${batch^^}"; done"#;

    #[test]
    fn a_command_translates_batches_in_order() {
        let t = ProcessTranslator::command(sh(UPPER), Duration::from_secs(10)).unwrap();
        let out = t
            .translate(&["one".into(), "two\nlines".into(), "".into()])
            .unwrap();
        assert_eq!(out, ["ONE", "TWO LINES", ""]);
        assert_eq!(t.translate(&["again".into()]).unwrap(), ["AGAIN"]);
    }

    #[test]
    fn a_process_that_dies_is_restarted_and_the_batch_retried_once() {
        // Dies on its first batch only (a marker file remembers).
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("died");
        let script = format!(
            r#"while IFS= read -r -d '' batch; do case "$batch" in *CRASH*) if [ ! -e {m} ]; then touch {m}; exit 3; fi;; esac; printf '%s\0' "${{batch^^}}"; done"#,
            m = marker.display()
        );
        let t = ProcessTranslator::command(sh(&script), Duration::from_secs(10)).unwrap();
        assert_eq!(t.translate(&["CRASH once".into()]).unwrap(), ["CRASH ONCE"]);
        // Dies every time: the batch fails after one retry, saying why.
        let always = r#"while IFS= read -r -d '' batch; do case "$batch" in *CRASH*) echo "boom on input" >&2; exit 3;; esac; printf '%s\0' "${batch^^}"; done"#;
        let t = ProcessTranslator::command(sh(always), Duration::from_secs(10)).unwrap();
        let e = t.translate(&["CRASH".into()]).unwrap_err();
        assert!(
            e.contains("exited") && e.contains("boom on input") && e.contains("retried"),
            "{e}"
        );
        // And the next batch gets a fresh process.
        assert_eq!(t.translate(&["fine".into()]).unwrap(), ["FINE"]);
    }

    #[test]
    fn a_hung_process_times_out_and_a_short_answer_is_an_error() {
        let hang = r#"while IFS= read -r -d '' batch; do case "$batch" in *HANG*) sleep 30;; esac; printf '%s\0' "$batch"; done"#;
        let t = ProcessTranslator::command(sh(hang), Duration::from_secs(1)).unwrap();
        let e = t.translate(&["HANG".into()]).unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        let short = r#"while IFS= read -r -d '' batch; do printf 'x\n\0'; done"#;
        let t = ProcessTranslator::command(sh(short), Duration::from_secs(5)).unwrap();
        let e = t.translate(&["a".into(), "b".into()]).unwrap_err();
        assert!(e.contains("1 lines for 2 texts"), "{e}");
    }

    #[test]
    fn a_missing_command_is_refused() {
        let e = ProcessTranslator::command(
            vec!["/nonexistent/translator".into()],
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(e.contains("cannot start `/nonexistent/translator`"), "{e}");
    }

    fn pairs(units: &[Unit]) -> Vec<(&str, Option<&str>)> {
        units
            .iter()
            .map(|u| (u.surface.as_str(), u.tag.as_deref()))
            .collect()
    }

    #[test]
    fn escaped_angles_and_stars_in_a_lemma_are_not_tags() {
        // Found by the `translate` fuzz target: `<j>` as a word took the
        // tag `j`, and `*i` was taken for an unknown word.
        let u = tagged_units(r"^\<j\>/\<j\><n>$ ^\*i/\*i<adj>$ ^a/a\<b<vblex>$");
        let pairs = pairs(&u);
        assert_eq!(
            pairs,
            [
                ("<j>", Some("n")),
                ("*i", Some("adj")),
                ("a", Some("vblex"))
            ]
        );
    }

    #[test]
    fn tagger_units_have_surface_and_first_tag() {
        let u = tagged_units(
            r"^The/The<det><def><sp>$ ^foxes/fox<n><pl>$ ^zebra/*zebra$^\[x/\[x<n>$ ^in front of/in front of<pr>$^./.<sent>$",
        );
        let pairs = pairs(&u);
        assert_eq!(
            pairs,
            [
                ("The", Some("det")),
                ("foxes", Some("n")),
                ("zebra", None),
                ("[x", Some("n")),
                ("in front of", Some("pr")),
                (".", Some("sent")),
            ]
        );
        let t = ProcessTranslator::apertium_tagger(
            Path::new("/usr/share/apertium"),
            "eng-spa",
            Duration::from_secs(30),
        )
        .expect("Apertium with apertium-eng-spa (scripts/setup.sh installs them)");
        let out = t
            .translate(&["The foxes were running [quickly].".into()])
            .unwrap();
        let tags: Vec<Option<String>> = tagged_units(&out[0]).into_iter().map(|u| u.tag).collect();
        let tags: Vec<Option<&str>> = tags.iter().map(|t| t.as_deref()).collect();
        assert_eq!(
            tags,
            [
                Some("det"),
                Some("n"),
                Some("vbser"),
                Some("vblex"),
                Some("lpar"),
                Some("adv"),
                Some("rpar"),
                Some("sent")
            ]
        );
    }

    #[test]
    fn apertium_round_trip_and_missing_pair() {
        let dir = Path::new("/usr/share/apertium");
        let e = ProcessTranslator::apertium(dir, &["eng-xxx".into()], Duration::from_secs(30))
            .err()
            .unwrap();
        assert!(
            e.contains("no `eng-xxx` pair") && e.contains("eng-spa"),
            "{e}"
        );
        let t = ProcessTranslator::apertium(
            dir,
            &["eng-spa".into(), "spa-eng".into()],
            Duration::from_secs(30),
        )
        .expect("Apertium with apertium-eng-spa (scripts/setup.sh installs them)");
        let out = t
            .translate(&[
                "The quick brown fox jumps over the lazy dog.".into(),
                "Brackets [x] and ^carets$ survive \\ escaping.".into(),
                "".into(),
            ])
            .unwrap();
        assert_eq!(out.len(), 3);
        assert!(out[0].contains("fox") && out[0].contains("dog"), "{out:?}");
        assert!(out[1].contains("[x]") && out[1].contains('^'), "{out:?}");
        assert_eq!(out[2], "");
    }
}
