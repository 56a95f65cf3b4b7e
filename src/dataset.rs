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
