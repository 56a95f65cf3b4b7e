//! The dataset's on-disk contract, shared by the engine that writes a
//! dataset and by `kiln inspect` and `kiln train` that read one:
//! `manifest.json` (written last: shards, rows, bytes, SHA-256 and the
//! totals), the shard format, and the counts every task and the whole
//! dataset keep (`samples_in = samples_out + rejected + filtered`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Arrow IPC stream shards that `datasets.load_from_disk` opens.
    #[default]
    Arrow,
    /// Parquet shards.
    Parquet,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Arrow => "arrow",
            OutputFormat::Parquet => "parquet",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestShard {
    pub file: String,
    pub task: usize,
    pub rows: u64,
    pub documents: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub kiln: String,
    pub kind: String,
    pub format: OutputFormat,
    pub plan: String,
    pub seed: u64,
    pub tasks: usize,
    pub shards: Vec<ManifestShard>,
    pub rejects_file: String,
    pub totals: Counts,
    pub bytes: u64,
    /// The pipeline that made it (see `Plan::pipeline`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub pipeline: serde_json::Value,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join("manifest.json");
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io_path("read", &path, e)),
        }
    }
}

/// A committed dataset on local disk: `location` itself, or for a URL a
/// copy in kiln's cache (`$KILN_CACHE`, else `~/.cache/kiln`), made once
/// per manifest: the files the manifest names, each shard checked against
/// its SHA-256.
pub fn local_copy(location: &str) -> Result<std::path::PathBuf> {
    if !crate::storage::is_url(location) {
        return Ok(location.into());
    }
    #[cfg(not(feature = "cloud"))]
    return Err(Error::Config(
        crate::storage::check(location).expect_err("a URL without the cloud feature"),
    ));
    #[cfg(feature = "cloud")]
    {
        let shown = crate::storage::redact(location);
        let dir = crate::storage::RemoteDir::open(location)
            .map_err(|e| Error::io(format!("open {shown}"), e))?;
        let bytes = dir
            .get("manifest.json")
            .map_err(|e| Error::io(format!("read {shown}/manifest.json"), e))?
            .ok_or_else(|| {
                Error::Output(format!(
                    "{shown} has no manifest.json: not a committed kiln dataset"
                ))
            })?;
        let manifest: Manifest = serde_json::from_slice(&bytes)?;
        let cache = std::env::var_os("KILN_CACHE")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kiln")))
            .unwrap_or_else(std::env::temp_dir);
        let key = sha256_hex(format!("{location}\n{}", manifest.plan).as_bytes());
        let to = cache.join("datasets").join(&key[..16]);
        let complete =
            |to: &Path| std::fs::read(to.join("manifest.json")).is_ok_and(|b| b == bytes);
        if complete(&to) {
            return Ok(to);
        }
        // Downloaded beside, then renamed into place: processes copying the
        // same dataset at once (the ranks of a training job) never read a
        // half-written file, and the first complete copy wins.
        let partial = to.with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| Error::io_path("create", &partial, e))?;
        let done = copy_into(&dir, &manifest, &bytes, &shown, &partial);
        if let Err(e) = done {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        if complete(&to) {
            // Another process finished first.
            let _ = std::fs::remove_dir_all(&partial);
            return Ok(to);
        }
        // A stale copy (of another commit at this location) goes.
        let _ = std::fs::remove_dir_all(&to);
        match std::fs::rename(&partial, &to) {
            Ok(()) => Ok(to),
            Err(_) if complete(&to) => {
                let _ = std::fs::remove_dir_all(&partial);
                Ok(to)
            }
            Err(e) => Err(Error::io_path("rename", &partial, e)),
        }
    }
}

/// The files of the dataset at `dir` its `manifest` lists, checked against
/// their SHA-256, then the manifest (`bytes`), into the folder `to`.
#[cfg(feature = "cloud")]
fn copy_into(
    dir: &crate::storage::RemoteDir,
    manifest: &Manifest,
    bytes: &[u8],
    shown: &str,
    to: &Path,
) -> Result<()> {
    {
        let mut names: Vec<&str> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
        names.extend([
            manifest.rejects_file.as_str(),
            "dataset_info.json",
            "state.json",
            "tokenizer.json",
        ]);
        for name in names {
            let file = to.join(name);
            let got = dir
                .download(name, &file)
                .map_err(|e| Error::io(format!("download {shown}/{name}"), e))?;
            let shard = manifest.shards.iter().find(|s| s.file == name);
            if let Some(s) = shard {
                let data = std::fs::read(&file).map_err(|e| Error::io_path("read", &file, e))?;
                if !got || sha256_hex(&data) != s.sha256 {
                    return Err(Error::Output(format!(
                        "{shown}/{name} does not match the SHA-256 its manifest records"
                    )));
                }
            }
        }
        // Last: a copy with its manifest is complete.
        std::fs::write(to.join("manifest.json"), bytes).map_err(|e| Error::io_path("write", to, e))
    }
}

/// Counts of a task, or of a whole dataset when added up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Samples read: every record a reader produced or rejected.
    pub samples_in: u64,
    /// Samples in the output (documents, not windows).
    pub samples_out: u64,
    pub rejected: u64,
    /// Samples the SQL query dropped on purpose.
    pub filtered: u64,
    /// Output rows (windows when chunked).
    pub rows: u64,
    pub tokens: u64,
    /// Rejects by `stage/kind`.
    pub rejected_by: BTreeMap<String, u64>,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.samples_in += other.samples_in;
        self.samples_out += other.samples_out;
        self.rejected += other.rejected;
        self.filtered += other.filtered;
        self.rows += other.rows;
        self.tokens += other.tokens;
        for (k, v) in &other.rejected_by {
            *self.rejected_by.entry(k.clone()).or_default() += v;
        }
    }
}

/// The SHA-256 of `bytes`, in hex: shard checksums, the plan's hash, the
/// tokenizer's.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// A reader that hashes (SHA-256) what it reads.
pub struct HashReader<R> {
    inner: R,
    hash: ring::digest::Context,
}

impl<R: std::io::Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// Read the rest, then the SHA-256 of everything, in hex.
    pub fn finish(mut self) -> std::io::Result<String> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(hex::encode(self.hash.finish()))
    }
}

impl<R: std::io::Read> std::io::Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// What is wrong with a shard of `dir` without reading it: missing, or
/// another size than the manifest's.
pub fn shard_size_problem(dir: &Path, s: &ManifestShard) -> Option<String> {
    match std::fs::metadata(dir.join(&s.file)) {
        Ok(m) if m.is_file() && m.len() == s.bytes => None,
        Ok(m) if m.is_file() => Some(format!(
            "{} bytes on disk, the manifest says {} (truncated or replaced)",
            m.len(),
            s.bytes
        )),
        Ok(_) => Some("not a regular file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing".into()),
        Err(e) => Some(format!("unreadable: {e}")),
    }
}

/// What is wrong with a shard whose bytes hash to `got`.
pub fn checksum_problem(s: &ManifestShard, got: &str) -> Option<String> {
    (got != s.sha256).then(|| {
        format!(
            "its SHA-256 is {got}, the manifest says {} (its bytes changed after kiln wrote it)",
            s.sha256
        )
    })
}

/// Every shard of the dataset at `dir` checked against its manifest: size,
/// then SHA-256 of its bytes (shards read in parallel). `(file, problem)`
/// for each that does not match, in manifest order.
pub fn verify_shards(dir: &Path, manifest: &Manifest) -> Vec<(String, String)> {
    use rayon::prelude::*;
    let problems: Vec<Option<(String, String)>> = manifest
        .shards
        .par_iter()
        .map(|s| {
            let problem = shard_size_problem(dir, s).or_else(|| {
                let path = dir.join(&s.file);
                let read = std::fs::File::open(&path)
                    .map(|f| HashReader::new(std::io::BufReader::with_capacity(1 << 20, f)))
                    .and_then(HashReader::finish);
                match read {
                    Ok(got) => checksum_problem(s, &got),
                    Err(e) => Some(format!("unreadable: {e}")),
                }
            });
            problem.map(|p| (s.file.clone(), p))
        })
        .collect();
    problems.into_iter().flatten().collect()
}

/// The error for a damaged dataset: each shard named with what is wrong.
pub fn damaged(dir: &Path, problems: &[(String, String)]) -> Error {
    let listed: Vec<String> = problems
        .iter()
        .map(|(file, p)| format!("\n  {file}: {p}"))
        .collect();
    Error::Output(format!(
        "{} is damaged ({} problem{}):{}\nrestore those files or rebuild the dataset; `kiln verify {}` checks every shard",
        dir.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        listed.concat(),
        dir.display()
    ))
}

/// `kiln verify`: the dataset at `dir` checked whole: every shard against
/// the manifest (size, then SHA-256), the files beside them, and the
/// manifest's own counts (shard rows add up to `rows`, `samples_in =
/// samples_out + rejected + filtered`). Its manifest, or what is wrong.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let manifest = Manifest::read(dir)
        .map_err(|e| {
            Error::Output(format!(
                "{}: manifest.json cannot be read: {e}",
                dir.display()
            ))
        })?
        .ok_or_else(|| {
            Error::Output(format!(
                "{} has no manifest.json: not a finished kiln dataset",
                dir.display()
            ))
        })?;
    let mut problems = verify_shards(dir, &manifest);
    for name in [
        manifest.rejects_file.as_str(),
        "dataset_info.json",
        "state.json",
    ] {
        if !dir.join(name).is_file() {
            problems.push((name.to_string(), "missing".into()));
        }
    }
    let t = &manifest.totals;
    let rows: u64 = manifest.shards.iter().map(|s| s.rows).sum();
    let bytes: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
    if rows != t.rows || bytes != manifest.bytes {
        problems.push((
            "manifest.json".into(),
            format!(
                "its shards hold {rows} rows and {bytes} bytes, its totals say {} and {}",
                t.rows, manifest.bytes
            ),
        ));
    }
    if t.samples_in != t.samples_out + t.rejected + t.filtered {
        problems.push((
            "manifest.json".into(),
            format!(
                "samples in ({}) is not out + rejected + filtered ({} + {} + {})",
                t.samples_in, t.samples_out, t.rejected, t.filtered
            ),
        ));
    }
    match problems.is_empty() {
        true => Ok(manifest),
        false => Err(damaged(dir, &problems)),
    }
}
