//! Planning: the inputs cut into tasks, deterministically, and frozen with
//! the input fingerprints and a hash of everything that decides the output.
//!
//! A task is the unit of work, retry and distribution. Line-oriented files
//! are cut into byte ranges of about `plan.task_bytes`; Parquet files into
//! row-group ranges; other files are read whole; small pieces are packed into
//! one task. The plan never depends on the thread count or the machine.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sources::input::InputFormat;

use crate::error::{Error, IoContext, Result};
use crate::pipeline::Pipeline;
use crate::sinks::OutputFormat;
use crate::sources::{self, Split};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub path: String,
    pub size: u64,
    pub modified_ns: u128,
    /// The store's entity tag of a remote object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// SHA-256 of the content, with `plan.verify = "content"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Fingerprint {
    /// How `self` (planned) differs from `now`, in words.
    pub fn change(&self, now: &Fingerprint) -> Option<String> {
        Some(if self.size != now.size {
            format!("{} bytes, {} when planned", now.size, self.size)
        } else if self.sha256 != now.sha256 {
            "its content (SHA-256) differs from when planned".into()
        } else if self.modified_ns != now.modified_ns || self.etag != now.etag {
            "modified since planned (its time or version changed)".into()
        } else {
            return None;
        })
    }
}

/// SHA-256 of a file or object's content, read whole; `None` when it
/// cannot be read (its reader rejects it).
fn content_sha256(location: &str) -> Option<String> {
    let f = crate::storage::open(location).ok()?;
    let r = crate::dataset::HashReader::new(std::io::BufReader::with_capacity(1 << 20, f));
    r.finish().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub index: usize,
    /// Input bytes the task covers (for progress and ETA).
    pub bytes: u64,
    pub splits: Vec<Split>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Hash of the pipeline, inputs, seed and tasks: two runs with the same
    /// hash write the same bytes.
    pub hash: String,
    pub seed: u64,
    pub inputs: Vec<Fingerprint>,
    pub tasks: Vec<Task>,
    /// What `kiln commit` needs without the pipeline file.
    pub format: OutputFormat,
    /// HuggingFace features of the dataset schema.
    pub features: serde_json::Value,
    /// The dataset kind (`text`, `image`): which `schemas/` file it follows.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// The pipeline as run (command-line overrides applied), without the
    /// output location and the storage settings: what `kiln report` shows
    /// and reads the spectrogram's axes from.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub pipeline: serde_json::Value,
}

fn default_kind() -> String {
    "text".into()
}

impl Plan {
    pub fn make(pipeline: &Pipeline) -> Result<Plan> {
        let task_bytes = pipeline.config.plan.task_bytes.max(1);
        let mut fingerprints = Vec::new();
        // (split, estimated bytes) in input order.
        let mut pieces: Vec<(Split, u64)> = Vec::new();
        for (i, input) in pipeline.inputs.iter().enumerate() {
            for path in &input.files {
                let (size, modified_ns, etag) = match crate::storage::stat(path) {
                    Ok(m) => (m.size, m.modified_ns, m.etag),
                    // Unreadable now: the reader will reject it.
                    Err(_) => (0, 0, None),
                };
                fingerprints.push(Fingerprint {
                    path: path.clone(),
                    size,
                    modified_ns,
                    etag,
                    sha256: None,
                });
                let name = input.name_of(path);
                let split = |start, end, first_row| Split {
                    input: i,
                    path: path.clone(),
                    name: name.clone(),
                    start,
                    end,
                    first_row,
                };
                if input.spec.format == InputFormat::Parquet {
                    match sources::row_groups(path) {
                        Ok(groups) if !groups.is_empty() => {
                            let total: u128 =
                                groups.iter().map(|&r| r as u128).sum::<u128>().max(1);
                            let mut first_row: u64 = 0;
                            for (g, &rows) in groups.iter().enumerate() {
                                let est = (size as u128 * rows as u128 / total) as u64;
                                pieces.push((split(g as u64, g as u64 + 1, first_row), est));
                                first_row = first_row.saturating_add(rows);
                            }
                        }
                        // Not Parquet, or no rows: one piece the reader handles.
                        _ => pieces.push((split(0, 0, 0), size)),
                    }
                } else if input.spec.splittable() && size > task_bytes {
                    let mut start = 0;
                    while start < size {
                        let end = (start + task_bytes).min(size);
                        pieces.push((split(start, end, 0), end - start));
                        start = end;
                    }
                } else {
                    pieces.push((split(0, size, 0), size));
                }
            }
        }
        let mut tasks: Vec<Task> = Vec::new();
        for (piece, bytes) in pieces {
            match tasks.last_mut() {
                Some(t) if t.bytes + bytes <= task_bytes => {
                    t.bytes += bytes;
                    t.splits.push(piece);
                }
                _ => tasks.push(Task {
                    index: tasks.len(),
                    bytes,
                    splits: vec![piece],
                }),
            }
        }
        if pipeline.config.plan.verify == crate::config::Verify::Content {
            use rayon::prelude::*;
            fingerprints
                .par_iter_mut()
                .for_each(|f| f.sha256 = content_sha256(&f.path));
        }
        let hash = plan_hash(pipeline, &fingerprints, &tasks)?;
        Ok(Plan {
            hash,
            seed: pipeline.config.seed,
            inputs: fingerprints,
            tasks,
            format: pipeline.config.output.format,
            features: crate::schema::hf_features(&pipeline.dataset_schema),
            kind: pipeline.kind.kind.clone(),
            pipeline: serde_json::to_value(hashed_config(pipeline))?,
        })
    }

    /// The inputs' fingerprints by path.
    pub fn inputs_by_path(&self) -> std::collections::HashMap<&str, &Fingerprint> {
        self.inputs.iter().map(|f| (f.path.as_str(), f)).collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.tasks.iter().map(|t| t.bytes).sum()
    }

    pub fn read(path: &Path) -> Result<Option<Plan>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io_path("read", path, e)),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// Everything that decides the output bytes, hashed. The output directory
/// itself is not part of it.
/// The pipeline's settings that decide the bytes: where the output goes,
/// where the store is and how patiently it is asked do not change one.
/// Why `now` is another plan than `old`, in words: the first input that
/// changed (named), inputs added or gone, or the pipeline or seed.
pub fn what_changed(old: &Plan, now: &Plan) -> String {
    for (a, b) in old.inputs.iter().zip(&now.inputs) {
        if a.path != b.path {
            break;
        }
        if let Some(change) = a.change(b) {
            return format!(
                "the input {} changed: {change}",
                crate::storage::redact(&a.path)
            );
        }
    }
    if old.inputs.len() != now.inputs.len()
        || old
            .inputs
            .iter()
            .zip(&now.inputs)
            .any(|(a, b)| a.path != b.path)
    {
        return format!(
            "the inputs differ: {} files planned, {} now",
            old.inputs.len(),
            now.inputs.len()
        );
    }
    "the pipeline, its settings or the seed changed since".into()
}

fn hashed_config(pipeline: &Pipeline) -> crate::config::PipelineConfig {
    let mut config = pipeline.config.clone();
    config.output.path = String::new();
    config.storage = Default::default();
    config
}

fn plan_hash(pipeline: &Pipeline, inputs: &[Fingerprint], tasks: &[Task]) -> Result<String> {
    let mut doc = serde_json::json!({
        "kiln": env!("CARGO_PKG_VERSION"),
        "config": hashed_config(pipeline),
        "inputs": inputs,
        "tasks": tasks,
        "tokenizer": "",
        "domain_vocab": "",
    });
    // The files stages read when built (a tokenizer file, a domain
    // vocabulary), by name.
    for (name, sha256) in &pipeline.files {
        doc[*name] = serde_json::Value::String(sha256.clone());
    }
    Ok(crate::dataset::sha256_hex(&serde_json::to_vec(&doc)?))
}

/// Write `bytes` to `path` so that readers see the old file or the new one,
/// never half of one: a temporary file in the same directory, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).at("create", &tmp)?;
        f.write_all(bytes).at("write", &tmp)?;
        f.sync_all().at("sync", &tmp)?;
    }
    std::fs::rename(&tmp, path).at("rename", &tmp)?;
    Ok(())
}
