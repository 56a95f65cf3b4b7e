//! Helpers shared by the integration tests: a scratch directory with a
//! generated corpus, pipeline files, and the `kiln` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("KILN_THROTTLE_MS");
    c
}

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Run kiln with the scratch directory as working directory.
    pub fn kiln(&self, args: &[&str]) -> Output {
        kiln()
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .unwrap()
    }
}

/// A deterministic corpus: `files` JSONL files of `lines` documents each.
pub fn corpus(s: &Scratch, dir: &str, files: usize, lines: usize) {
    let words = [
        "kiln", "fires", "clay", "into", "pots", "while", "the", "arrow", "flies", "over",
        "parquet", "floors", "and", "tokens", "stream", "through", "shards", "of", "memory",
        "seed", "sample", "batch", "gradient", "descends",
    ];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for f in 0..files {
        let mut text = String::new();
        for i in 0..lines {
            let n = 3 + (next() % 40) as usize;
            let doc: Vec<&str> = (0..n)
                .map(|_| words[(next() % words.len() as u64) as usize])
                .collect();
            text.push_str(&format!(
                "{{\"id\": {}, \"text\": \"{}.\", \"lang\": \"{}\"}}\n",
                f * lines + i,
                doc.join(" "),
                if i % 3 == 0 { "fr" } else { "en" }
            ));
        }
        s.write(&format!("{dir}/part-{f:03}.jsonl"), text);
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "kiln failed ({:?}):\n{}",
        o.status.code(),
        stderr(o)
    );
}

pub fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Every file of a finished dataset (not `.kiln/`), with its bytes.
pub fn dataset_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

pub fn assert_same_dataset(a: &Path, b: &Path) {
    let (fa, fb) = (dataset_files(a), dataset_files(b));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb), "same files");
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(
            x == y,
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// Every record batch of an Arrow-shard dataset, in shard order.
pub fn read_dataset(dir: &Path) -> Vec<arrow::array::RecordBatch> {
    let m = manifest(dir);
    let mut out = Vec::new();
    for s in m["shards"].as_array().unwrap() {
        let f = std::fs::File::open(dir.join(s["file"].as_str().unwrap())).unwrap();
        for b in arrow::ipc::reader::StreamReader::try_new(f, None).unwrap() {
            out.push(b.unwrap());
        }
    }
    out
}

/// Rows of all rejects in a dataset as (sample_id, stage, kind).
pub fn rejects(dir: &Path) -> Vec<(String, String, String)> {
    use arrow::array::AsArray;
    let f = std::fs::File::open(dir.join("rejects.arrow")).unwrap();
    let r = arrow::ipc::reader::StreamReader::try_new(f, None).unwrap();
    let mut out = Vec::new();
    for b in r {
        let b = b.unwrap();
        let col = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (id, stage, kind) = (col("sample_id"), col("stage"), col("kind"));
        for i in 0..b.num_rows() {
            out.push((
                id.value(i).to_string(),
                stage.value(i).to_string(),
                kind.value(i).to_string(),
            ));
        }
    }
    out
}

/// A pipeline over `input` writing to `output`, with extra TOML appended to
/// the tokenize stage and top level.
pub fn text_pipeline(input: &str, output: &str, extra_top: &str, extra_stage: &str) -> String {
    format!(
        r#"seed = 1
{extra_top}

[[inputs]]
path = "{input}"

[[stages]]
type = "tokenize"
{extra_stage}

[stages.train]
vocab_size = 400
min_frequency = 1

[output]
path = "{output}"
"#
    )
}

/// Start `kiln run p.toml --output NAME` in `s` (throttled, two threads),
/// SIGKILL it once `tasks` task markers are written, check it was still
/// running, then run it again to the end. Returns the output folder.
pub fn kill_after_tasks_then_rerun(s: &Scratch, name: &str, tasks: usize) -> std::path::PathBuf {
    let out = s.path(name);
    let mut child = kiln()
        .current_dir(s.dir.path())
        .env("KILN_THROTTLE_MS", "40")
        .args(["run", "p.toml", "-q", "--output", name, "--threads", "2"])
        .spawn()
        .unwrap();
    let markers = || {
        std::fs::read_dir(out.join(".kiln/tasks"))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    while markers() < tasks && child.try_wait().unwrap().is_none() {
        assert!(start.elapsed().as_secs() < 120, "{tasks} tasks finished");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    child.kill().ok();
    child.wait().unwrap();
    assert!(killed, "the run was killed before it finished");
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", name]));
    out
}

/// The repository root, where pipelines/ and fixtures/ are.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file under fixtures/, as a string for pipeline files.
pub fn fixture_path(rel: &str) -> String {
    root().join("fixtures").join(rel).display().to_string()
}

/// Run `pipeline` (a pipeline file without its `[output]`) in `s`, into
/// the folder `name`, which it returns; `args` go to `kiln run`.
pub fn build_in(s: &Scratch, name: &str, pipeline: &str, args: &[&str]) -> PathBuf {
    let out = s.path(name);
    let p = s.write(
        &format!("{name}.toml"),
        format!("{pipeline}\n[output]\npath = \"{}\"\n", out.display()),
    );
    let mut all = vec!["run", p.to_str().unwrap(), "-q"];
    all.extend_from_slice(args);
    assert_ok(&s.kiln(&all));
    out
}

/// Run the example `pipelines/NAME` from the repository root into `out`
/// on `threads` threads; the SHA-256 of each shard, in order.
pub fn run_example(name: &str, out: &Path, threads: &str) -> Vec<String> {
    let o = kiln()
        .current_dir(root())
        .args([
            "run",
            &format!("pipelines/{name}"),
            "--output",
            out.to_str().unwrap(),
            "--threads",
            threads,
            "-q",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    manifest(out)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sha256"].as_str().unwrap().to_string())
        .collect()
}

/// Run `pipeline` (written with `[output] path = "out"`), which must be
/// refused before anything is written; the error.
pub fn refused(pipeline: &str) -> String {
    let s = Scratch::new();
    let p = s.write("p.toml", pipeline);
    let o = s.kiln(&["run", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!s.path("out").exists(), "nothing is written");
    stderr(&o)
}
