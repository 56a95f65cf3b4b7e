//! Commit: from the task markers alone, move every shard to its final name,
//! merge the rejects, and write `dataset_info.json`, `state.json` and, last,
//! `manifest.json`. Every step can be repeated: a commit killed halfway is
//! finished by the next one.

use std::path::Path;

use serde_json::json;

use super::plan::{Plan, write_atomic};
use super::task::{TaskMarker, read_marker, task_dir};
use crate::dataset::{Counts, Manifest, ManifestShard, OutputFormat};
use crate::error::{Error, IoContext, Result};
use crate::rejects;

/// Tasks of the plan that have no marker yet.
pub fn missing_tasks(out: &Path, plan: &Plan) -> Result<Vec<usize>> {
    let mut missing = Vec::new();
    for t in &plan.tasks {
        if read_marker(out, t.index)?.is_none() {
            missing.push(t.index);
        }
    }
    Ok(missing)
}

pub fn commit(out: &Path, plan: &Plan) -> Result<Manifest> {
    let format = plan.format;
    let mut markers: Vec<TaskMarker> = Vec::with_capacity(plan.tasks.len());
    let mut missing = Vec::new();
    for t in &plan.tasks {
        match read_marker(out, t.index)? {
            Some(m) if m.plan == plan.hash => markers.push(m),
            _ => missing.push(t.index),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Output(format!(
            "cannot commit {}: {} of {} tasks are not finished ({})",
            out.display(),
            missing.len(),
            plan.tasks.len(),
            list(&missing)
        )));
    }
    sweep_temporaries(out)?;
    let total: usize = markers.iter().map(|m| m.shards.len()).sum();
    let ext = format.extension();
    let mut shards = Vec::with_capacity(total);
    let mut totals = Counts::default();
    let mut reject_files = Vec::new();
    for m in &markers {
        totals.add(&m.counts);
        let dir = task_dir(out, m.task);
        if m.has_rejects {
            reject_files.push(dir.join("rejects.arrow"));
        }
        for s in &m.shards {
            let name = shard_name(shards.len(), total, format);
            let from = dir.join(&s.file);
            let to = out.join(&name);
            // The shard as its task wrote it, by size: a cheap check that
            // catches truncation before the manifest vouches for it.
            let here = if from.exists() { &from } else { &to };
            if let Ok(meta) = std::fs::metadata(here)
                && meta.len() != s.bytes
            {
                return Err(Error::Output(format!(
                    "cannot commit {}: shard {} of task {} is {} bytes, its task wrote {} (truncated or replaced since); delete {} to run that task again",
                    out.display(),
                    here.display(),
                    m.task,
                    meta.len(),
                    s.bytes,
                    super::task::marker_path(out, m.task).display()
                )));
            }
            if from.exists() {
                std::fs::rename(&from, &to).at("rename", &from)?;
                super::throttle();
            } else if !to.exists() {
                return Err(Error::Output(format!(
                    "shard {} of task {} is missing from {}",
                    s.file,
                    m.task,
                    out.display()
                )));
            }
            shards.push(ManifestShard {
                file: name,
                task: m.task,
                rows: s.rows,
                documents: s.documents,
                bytes: s.bytes,
                sha256: s.sha256.clone(),
            });
        }
    }
    if shards.is_empty() {
        // Every sample was rejected or filtered: one shard with no rows, so
        // that `load_from_disk` and friends open an empty dataset.
        let name = format!("data-00000-of-00001.{ext}");
        let from = out
            .join(".kiln")
            .join("empty")
            .join(format!("part-00000.{ext}"));
        let to = out.join(&name);
        if from.exists() {
            std::fs::rename(&from, &to).at("rename", &from)?;
        }
        let bytes = std::fs::read(&to).at("read", &to)?;
        shards.push(empty_shard(name, &bytes));
    }
    let rejects_file = "rejects.arrow".to_string();
    let tmp = out.join("rejects.arrow.tmp");
    rejects::merge(&reject_files, &tmp)?;
    std::fs::rename(&tmp, out.join(&rejects_file)).at("rename", &tmp)?;

    for (name, bytes) in loader_files(plan, &shards)? {
        write_atomic(&out.join(name), &bytes)?;
    }
    let manifest = manifest(plan, shards, rejects_file, totals);
    write_atomic(
        &out.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(manifest)
}

/// The files `datasets.load_from_disk` reads besides the shards
/// (`dataset_info.json`, `state.json`), for Arrow datasets.
pub fn loader_files(plan: &Plan, shards: &[ManifestShard]) -> Result<Vec<(&'static str, Vec<u8>)>> {
    if plan.format != OutputFormat::Arrow {
        return Ok(Vec::new());
    }
    let info = json!({
        "citation": "",
        "description": "",
        "features": plan.features,
        "homepage": "",
        "license": "",
    });
    let files: Vec<_> = shards
        .iter()
        .map(|s| json!({ "filename": s.file }))
        .collect();
    let state = json!({
        "_data_files": files,
        "_fingerprint": &plan.hash[..16],
        "_format_columns": null,
        "_format_kwargs": {},
        "_format_type": null,
        "_output_all_columns": false,
        "_split": null,
    });
    Ok(vec![
        ("dataset_info.json", serde_json::to_vec_pretty(&info)?),
        ("state.json", serde_json::to_vec_pretty(&state)?),
    ])
}

/// The manifest of a committed dataset.
pub fn manifest(
    plan: &Plan,
    shards: Vec<ManifestShard>,
    rejects_file: String,
    totals: Counts,
) -> Manifest {
    Manifest {
        kiln: env!("CARGO_PKG_VERSION").to_string(),
        kind: plan.kind.clone(),
        format: plan.format,
        plan: plan.hash.clone(),
        seed: plan.seed,
        tasks: plan.tasks.len(),
        bytes: shards.iter().map(|s| s.bytes).sum(),
        shards,
        rejects_file,
        totals,
        pipeline: plan.pipeline.clone(),
    }
}

/// The manifest's entry of the one shard of a dataset with no rows.
pub fn empty_shard(file: String, bytes: &[u8]) -> ManifestShard {
    ManifestShard {
        file,
        task: 0,
        rows: 0,
        documents: 0,
        bytes: bytes.len() as u64,
        sha256: crate::dataset::sha256_hex(bytes),
    }
}

/// The final name of shard `i` of `total`.
pub fn shard_name(i: usize, total: usize, format: OutputFormat) -> String {
    format!("data-{i:05}-of-{total:05}.{}", format.extension())
}

/// Remove what killed writers left half-written in the dataset directory
/// (`tokenizer.json.tmp.PID`, `manifest.json.tmp.PID`, ...). Called under the
/// commit lock with every task done, when nobody else writes there.
fn sweep_temporaries(out: &Path) -> Result<()> {
    for entry in std::fs::read_dir(out).at("list", out)? {
        let entry = entry.at("list", out)?;
        let name = entry.file_name();
        if name.to_string_lossy().contains(".tmp") && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).at("remove", entry.path())?;
        }
    }
    Ok(())
}

/// `1, 2, 5, ... (12 in all)`
pub fn list(ids: &[usize]) -> String {
    let head: Vec<String> = ids.iter().take(10).map(|i| i.to_string()).collect();
    if ids.len() > 10 {
        format!("{}, ... ({} in all)", head.join(", "), ids.len())
    } else {
        head.join(", ")
    }
}
