//! Fuzz targets: each takes arbitrary bytes, hands them to one of kiln's
//! readers or decoders the way a run does, and checks what a run promises.
//!
//! - A reader target writes the bytes to the one input file of a small
//!   pipeline, plans it, reads every split and runs the pipeline's stages,
//!   as a task does. It checks that nothing is lost (`in = out + rejected +
//!   filtered`, with the number of files as `in` for whole-file media), that
//!   every batch conforms to the dataset schema, and, for line-oriented
//!   files, that cutting the file into byte ranges gives the same samples as
//!   reading it whole. An `Err` must be one a run reports for a reason, not
//!   an internal error.
//! - `pipeline` parses the bytes as a pipeline file and builds it: every
//!   refusal names the file.
//! - `translate` checks the Apertium stream's escaping round trip and the
//!   tagger output parser.
//! - `loader` indexes the bytes as an Arrow IPC shard the way the trainer
//!   does and decodes every batch it finds.
//!
//! A panic out of a target, an abort or a hang is a finding (a panic kiln
//! catches, a decoder's turned into a reject, is printed; [`init`]). The
//! cargo-fuzz binaries in `fuzz/` call these functions, and
//! `tests/it/fuzz.rs` replays the corpora in `fuzz/corpus/` through them.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};

use crate::config::ConfigSource;
use crate::engine::plan::Plan;
use crate::engine::task::run_stages;
use crate::error::{Error, Result};
use crate::pipeline::{Pipeline, Planned};
use crate::rejects::RejectSink;
use crate::sources;
use crate::stages::Stage;

/// A fuzz target: any bytes; a panic is a finding.
pub type Target = fn(&[u8]);

/// The targets, by name: the name of the fuzz binary and of its corpus.
pub const TARGETS: &[(&str, Target)] = &[
    ("image", image),
    ("audio", audio),
    ("tar", tar),
    ("jsonl", jsonl),
    ("csv", csv),
    ("parquet", parquet),
    ("pipeline", pipeline),
    ("translate", translate),
    ("loader", loader),
];

/// For the fuzz binaries, once: a panic kiln catches on purpose (a
/// decoder's, which becomes a reject) is printed, not taken for a crash; a
/// panic that leaves the target still stops libFuzzer (it aborts on it).
pub fn init() {
    std::panic::set_hook(Box::new(|info| eprintln!("kiln fuzz: a panic: {info}")));
}

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

const LIMITS: &str = "
[limits]
max_image_pixels = 4000000
max_audio_seconds = 5.0
max_line_bytes = 65536
max_file_bytes = 16777216
";

const IMAGE_STAGES: &str = r#"
[[stages]]
type = "decode_image"
draft = DRAFT

[[stages]]
type = "resize_image"
size = 24
crop = 16
filter = "bicubic"

[[stages]]
type = "encode_image"
format = "jpeg"
quality = 75
"#;

/// The first byte picks the file's extension from `exts`, the rest is the file.
fn named<'a>(data: &'a [u8], exts: &[&'static str]) -> (&'static str, &'a [u8]) {
    let (pick, file) = data.split_first().unwrap_or((&0, &[]));
    (exts[*pick as usize % exts.len()], file)
}

/// A folder of one image (the first byte picks its extension).
pub fn image(data: &[u8]) {
    let (ext, data) = named(data, &["jpg", "png", "webp", "gif", "bmp", "tif"]);
    with_harness("image", |h| {
        h.write_only(&format!("in/cat/x.{ext}"), data);
        let c = h.run(&format!(
            "[[inputs]]\npath = \"{}\"\nformat = \"images\"\n{}{LIMITS}",
            h.path("in"),
            // JPEGs of 48 pixels and more a side through libjpeg-turbo's
            // scaled decoding, the rest (and the tar target's) in full.
            IMAGE_STAGES.replace("DRAFT", "true")
        ));
        assert_eq!(c.read + c.read_rejects, 1, "one file, one sample");
    });
}

/// A folder of one audio clip (the first byte picks its extension).
pub fn audio(data: &[u8]) {
    let (ext, data) = named(data, &["wav", "flac", "mp3", "ogg"]);
    with_harness("audio", |h| {
        h.write_only(&format!("in/yes/x.{ext}"), data);
        let c = h.run(&format!(
            r#"
[[inputs]]
path = "{}"
format = "audio"

[[stages]]
type = "decode_audio"
mono = true
sample_rate = 8000
duration = 0.25

[[stages]]
type = "mel_spectrogram"
n_fft = 200
hop_length = 80
n_mels = 16
{LIMITS}"#,
            h.path("in")
        ));
        assert_eq!(c.read + c.read_rejects, 1, "one file, one sample");
    });
}

/// A WebDataset shard of images (key.jpg + key.cls ...).
pub fn tar(data: &[u8]) {
    with_harness("tar", |h| {
        h.write_only("in.tar", data);
        h.run(&format!(
            "[[inputs]]\npath = \"{}\"\nformat = \"tar\"\nclasses = [\"cat\", \"dog\"]\n{}{LIMITS}",
            h.path("in.tar"),
            IMAGE_STAGES.replace("DRAFT", "false")
        ));
    });
}

/// A JSONL file with a text field and an extra column, read whole and cut
/// into 7-byte ranges: the same samples and rejects either way.
pub fn jsonl(data: &[u8]) {
    table(
        "jsonl",
        "format = \"jsonl\"\ncolumns = [\"lang\"]",
        data,
        true,
    );
}

/// A CSV file with a header, a text column and an extra column.
pub fn csv(data: &[u8]) {
    table("csv", "format = \"csv\"\ncolumns = [\"lang\"]", data, false);
}

/// A text table through the tokenizer; `cut`: also read in byte ranges (a
/// line-oriented file), which must give the same samples and rejects.
fn table(name: &'static str, input: &str, data: &[u8], cut: bool) {
    with_harness(name, |h| {
        let stages = format!(
            "[[stages]]\ntype = \"tokenize\"\ntokenizer = \"{}\"\nkeep_text = true\n",
            h.path("tokenizer.json")
        );
        if !h.ready {
            h.file("tokenizer.json", TOKENIZER.as_bytes());
            h.ready = true;
        }
        h.write_only(&format!("in.{name}"), data);
        let file = h.path(&format!("in.{name}"));
        let pipeline = format!("[[inputs]]\npath = \"{file}\"\n{input}\n{stages}{LIMITS}");
        let whole = h.run(&pipeline);
        if cut {
            let ranges = h.run(&format!("{pipeline}\n[plan]\ntask_bytes = 7\n"));
            assert_eq!(
                whole, ranges,
                "a file cut into ranges reads as the whole file"
            );
        }
    });
}

/// A Parquet file with a text column and an extra column.
pub fn parquet(data: &[u8]) {
    table(
        "parquet",
        "format = \"parquet\"\ncolumns = [\"lang\"]",
        data,
        false,
    );
}

/// The tokenizer the line-oriented targets encode with.
const TOKENIZER: &str = include_str!("../fixtures/text/tokenizer.json");

/// Stage types whose build reaches outside the harness (a model, WordNet,
/// a translator process): parsed, not built.
const NOT_BUILT: &[&str] = &["augment_text", "image_features"];

/// A pipeline file: parsed and, when it stays inside its folder, built. A
/// refusal names the file. Its relative paths are the harness folder's: the
/// process's working directory moves there.
pub fn pipeline(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    with_harness("pipeline", |h| {
        if !h.ready {
            h.file("tokenizer.json", TOKENIZER.as_bytes());
            h.file("data.jsonl", b"{\"text\": \"a b\"}\n");
            h.file("images/cat/a.png", &[]);
            std::env::set_current_dir(&h.dir).expect("the harness folder");
            h.ready = true;
        }
        let path = h.dir.join("fuzz.toml");
        let source = ConfigSource::pipeline(&path, text);
        let refused = |e: Error| {
            let shown = e.to_string();
            assert!(
                matches!(e, Error::Config(_)) && shown.contains("fuzz.toml"),
                "a refusal names the pipeline file: {shown}"
            );
        };
        let config = match source.parse() {
            Ok(c) => c,
            Err(e) => return refused(e),
        };
        let json = serde_json::to_value(&config).expect("a parsed config serializes");
        if !stays_inside(&json) {
            return;
        }
        if let Err(e) = Pipeline::build(source, config) {
            refused(e)
        }
    });
}

/// Whether every string of the config is a name inside the pipeline's
/// folder and no stage reaches outside it.
fn stays_inside(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            let outside = s.starts_with('/') || s.starts_with('~') || s.contains("..");
            !(outside || s.contains(':') || NOT_BUILT.contains(&s.as_str()))
        }
        Value::Array(a) => a.iter().all(stays_inside),
        Value::Object(o) => o.iter().all(|(k, v)| k != "command" && stays_inside(v)),
        _ => true,
    }
}

/// Texts (split at 0x01) through the Apertium stream's escaping and back;
/// the whole input as tagger output.
pub fn translate(data: &[u8]) {
    use crate::augment::translate::{decode_stream, encode_stream, tagged_units};
    let text = String::from_utf8_lossy(data);
    let texts: Vec<String> = text.split('\u{1}').map(str::to_string).collect();
    let sent = |t: &str| -> String {
        t.chars()
            .map(|c| {
                if matches!(c, '\n' | '\r' | '\0') {
                    ' '
                } else {
                    c
                }
            })
            .collect()
    };
    let stream = encode_stream(&texts, true);
    assert_eq!(
        stream.iter().filter(|&&b| b == 0).count(),
        1,
        "one NUL, at the end"
    );
    assert_eq!(stream.last(), Some(&0));
    let body = &stream[..stream.len() - 1];
    let back = decode_stream(body, texts.len(), true, false).expect("as many lines as texts");
    for (t, b) in texts.iter().zip(&back) {
        assert_eq!(
            b,
            sent(t).trim(),
            "a text comes back from an identity translator"
        );
    }
    // A tagger line of escaped words gives each word back as a unit.
    let flat = sent(&text);
    let words: Vec<&str> = flat.split_whitespace().collect();
    let escaped = encode_stream(
        &words.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        true,
    );
    let escaped = String::from_utf8_lossy(&escaped[..escaped.len() - 1]).into_owned();
    let line: String = escaped
        .split('\n')
        .filter(|w| !w.is_empty())
        .map(|w| format!("^{w}/{w}<n>$ "))
        .collect();
    let units = tagged_units(&line);
    let surfaces: Vec<&str> = units.iter().map(|u| u.surface.as_str()).collect();
    let expected: Vec<&str> = words
        .iter()
        .map(|w| w.trim())
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(surfaces, expected, "tagged units round trip");
    assert!(units.iter().all(|u| u.tag.as_deref() == Some("n")));
    let _ = tagged_units(&text);
}

/// The bytes as a trainer shard: indexed from the message headers, then
/// every batch decoded.
pub fn loader(data: &[u8]) {
    with_harness("loader", |h| {
        let path = h.write_only("shard.arrow", data);
        match crate::train::loader::read_shard_file(&path) {
            Ok((rows, batch)) => assert_eq!(batch.num_rows() as u64, rows, "the index's rows"),
            Err(e) => assert!(!matches!(e, Error::Internal(_)), "{e}"),
        }
    });
}

/// What one pass over the input gave.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    read: u64,
    read_rejects: u64,
    out: u64,
    rejects: u64,
    filtered: u64,
    ids: BTreeSet<String>,
}

/// A folder of its own, the pipelines over its one input file.
struct Harness {
    dir: PathBuf,
    /// Its fixed files are made.
    ready: bool,
}

thread_local! {
    static HARNESSES: RefCell<Vec<(&'static str, Harness)>> = const { RefCell::new(Vec::new()) };
}

fn with_harness(name: &'static str, f: impl FnOnce(&mut Harness)) {
    HARNESSES.with(|all| {
        let mut all = all.borrow_mut();
        if !all.iter().any(|(n, _)| *n == name) {
            let dir = std::env::temp_dir().join(format!(
                "kiln-fuzz-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temporary folder");
            all.push((name, Harness { dir, ready: false }));
        }
        let h = &mut all.iter_mut().find(|(n, _)| *n == name).expect("added").1;
        f(h)
    })
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness {
    /// `name` in the harness's folder, as the pipeline names it.
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::create_dir_all(path.parent().expect("inside the folder")).expect("a folder");
        std::fs::write(&path, bytes).expect("a temporary file");
        path
    }

    /// Write the input file, the only file under its folder.
    fn write_only(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let top = self.dir.join(name.split('/').next().expect("a name"));
        if name.contains('/') {
            let _ = std::fs::remove_dir_all(&top);
        }
        self.file(name, bytes)
    }

    /// Build `text` (with an output) on the input as it is now, plan it and
    /// run every task's reading and stages.
    fn run(&self, text: &str) -> Counts {
        let path = self.dir.join("p.toml");
        let text = format!("{text}\n[output]\npath = \"out\"\n");
        let source = ConfigSource::pipeline(&path, text);
        let config = source.parse().expect("the harness pipeline parses");
        let p = Pipeline::build(source, config).expect("the harness pipeline builds");
        match run(&p) {
            Ok(c) => c,
            Err(e) => {
                assert!(!matches!(e, Error::Internal(_)), "{e}");
                Counts {
                    read: 0,
                    read_rejects: 0,
                    out: 0,
                    rejects: 0,
                    filtered: 0,
                    ids: [format!("error: {e}")].into(),
                }
            }
        }
    }
}

fn run(p: &Pipeline) -> Result<Counts> {
    let plan = Plan::make(p)?;
    let opts = p.read_options();
    let stages: Vec<Arc<dyn Stage>> = p
        .stages
        .iter()
        .map(|s| match s {
            Planned::Ready(s) => s.clone(),
            Planned::Fit(_) => panic!("the harness pipelines fit nothing"),
        })
        .collect();
    let mut rejects = RejectSink::discard();
    let mut c = Counts {
        read: 0,
        read_rejects: 0,
        out: 0,
        rejects: 0,
        filtered: 0,
        ids: BTreeSet::new(),
    };
    let spec_of = |s: &sources::Split| &p.inputs[s.input].spec;
    for task in &plan.tasks {
        for group in sources::groups(&task.splits, spec_of) {
            let mut reader = sources::open_group(group, spec_of(&group[0]), &opts);
            loop {
                let before = rejects.total;
                let batch = reader.next_batch(&mut rejects)?;
                c.read_rejects += rejects.total - before;
                let Some(batch) = batch else { break };
                c.read += batch.num_rows() as u64;
                let (batch, filtered) = run_stages(
                    &stages,
                    batch,
                    p.config.seed,
                    &mut rejects,
                    &p.dataset_schema,
                )?;
                c.filtered += filtered;
                c.out += batch.num_rows() as u64;
                c.ids.extend(ids(&batch));
            }
        }
    }
    c.rejects = rejects.total;
    assert_eq!(
        c.read + c.read_rejects,
        c.out + c.rejects + c.filtered,
        "in = out + rejected + filtered"
    );
    Ok(c)
}

fn ids(batch: &RecordBatch) -> Vec<String> {
    let ids = batch
        .column_by_name("sample_id")
        .expect("every dataset has sample ids")
        .as_string::<i32>();
    ids.iter().flatten().map(str::to_string).collect()
}

/// Run `target` on every file of `dir`, naming the file of a failure. It
/// runs on a thread with a main thread's stack and more: an unoptimised
/// build's frames are several times larger than a release build's, and the
/// pipeline parser recurses as deep as the TOML parser allows.
pub fn replay(target: Target, dir: &Path) -> usize {
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || replay_here(target, &dir))
        .expect("a thread")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn replay_here(target: Target, dir: &Path) -> usize {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in &files {
        let data = std::fs::read(f).expect("a corpus file");
        if let Err(why) = crate::error::catch_panic(|| target(&data)) {
            panic!("{}: {why}", f.display());
        }
    }
    files.len()
}
