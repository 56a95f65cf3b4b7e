//! Datasets written to an object store: a commit protocol with no rename
//! and no lock, which object stores do not have.
//!
//! ```text
//! OUT/.kiln/plan.json                    the frozen plan: a create-only write
//! OUT/tokenizer.json ...                 what fits made: create-only writes
//! OUT/.kiln/empty/part-00000.EXT         the shard of a dataset with no rows
//! OUT/.kiln/attempts/NNNNN-ATTEMPT/...   one attempt of task NNNNN: shards, rejects
//! OUT/.kiln/tasks/NNNNN.json             the task's marker: a create-only write
//! ```
//!
//! - **Prepare**: the plan is written with a create-only write; a second
//!   writer of the same plan goes on, a different plan is refused. What
//!   the fits made (the tokenizer) is written the same way.
//! - **Tasks**: an attempt builds its shards in a local spool folder
//!   (`$TMPDIR/kiln-spool-PID-ATTEMPT/`), uploads them under its own prefix
//!   (multipart, from the files), then writes the task's marker with a
//!   create-only write naming the attempt. The first marker wins; a losing
//!   attempt (a retry racing a zombie) deletes its own files. Shards are
//!   the same bytes whichever attempt wins.
//! - **Commit**: every marker must be there. The winners' shards are
//!   copied server-side to their final names, the rejects merged,
//!   `dataset_info.json` and `state.json` written, `manifest.json` written
//!   last with a create-only write, then `.kiln/` is deleted (a remote
//!   `load_from_disk` downloads everything under the prefix). Each step
//!   can be repeated: a commit killed anywhere is finished by the next.
//! - A store that ignores create-only writes is found by a probe when
//!   several processes share a job, which is then refused.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::commit::{self, loader_files, shard_name};
use super::plan::Plan;
use super::progress::Progress;
use super::task::{TaskEnv, TaskMarker, task_dir};
use super::{Outcome, RunOptions, fit_stages, init_threads, run_tasks, select_tasks};
use crate::dataset::{Counts, Manifest, ManifestShard};
use crate::error::{Error, IoContext, Result};
use crate::pipeline::Pipeline;
use crate::storage::{self, Created, RemoteDir};

/// A task's marker in the store: which attempt's files are the task's.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RemoteMarker {
    attempt: String,
    #[serde(flatten)]
    marker: TaskMarker,
}

fn marker_name(task: usize) -> String {
    format!(".kiln/tasks/{task:05}.json")
}

fn attempt_prefix(task: usize, attempt: &str) -> String {
    format!(".kiln/attempts/{task:05}-{attempt}")
}

fn io(what: &str, dir: &RemoteDir, name: &str) -> impl FnOnce(std::io::Error) -> Error {
    let at = storage::redact(&dir.url(name));
    let what = what.to_string();
    move |e| Error::io(format!("{what} {at}"), e)
}

/// A name for this attempt, unique among the processes of a job.
fn attempt_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let seed = format!("{}-{nanos}-{}", std::process::id(), host.trim());
    crate::dataset::sha256_hex(seed.as_bytes())[..12].to_string()
}

/// The local folder an attempt builds in (`$TMPDIR/kiln-spool-PID-ATTEMPT`),
/// removed when dropped. A killed process cannot remove its own: the next
/// attempt on the machine removes those whose process is gone.
struct Spool(PathBuf);

impl Spool {
    fn new(attempt: &str) -> Result<Spool> {
        let tmp = std::env::temp_dir();
        Self::sweep(&tmp);
        let dir = tmp.join(format!("kiln-spool-{}-{attempt}", std::process::id()));
        std::fs::create_dir_all(dir.join(".kiln").join("tasks")).at("create", &dir)?;
        Ok(Spool(dir))
    }

    /// Remove the spool folders of processes that no longer run.
    fn sweep(tmp: &Path) {
        let Ok(entries) = std::fs::read_dir(tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("kiln-spool-")) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or_default();
            let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_dir(location: &str) -> Result<RemoteDir> {
    RemoteDir::open(location)
        .map_err(|e| Error::io(format!("open {}", storage::redact(location)), e))
}

fn read_manifest(dir: &RemoteDir) -> Result<Option<Manifest>> {
    match dir
        .get("manifest.json")
        .map_err(io("read", dir, "manifest.json"))?
    {
        Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
        None => Ok(None),
    }
}

fn read_plan(dir: &RemoteDir) -> Result<Option<Plan>> {
    match dir
        .get(".kiln/plan.json")
        .map_err(io("read", dir, ".kiln/plan.json"))?
    {
        Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
        None => Ok(None),
    }
}

/// Delete what a finished commit left (a commit killed after its manifest).
fn sweep(dir: &RemoteDir) -> Result<()> {
    dir.delete_all(".kiln").map_err(io("delete", dir, ".kiln/"))
}

/// What [`prepare`] found.
enum Start {
    /// The dataset is already complete.
    Complete(Box<Manifest>),
    /// Work to do; the names the output prefix held before the plan.
    Open(Vec<String>),
}

/// Check the output prefix and write the plan.
fn prepare(dir: &RemoteDir, plan: &Plan, parallel: bool, attempt: &str) -> Result<Start> {
    if let Some(m) = read_manifest(dir)? {
        if m.plan == plan.hash {
            sweep(dir)?;
            return Ok(Start::Complete(Box::new(m)));
        }
        return Err(Error::Output(format!(
            "{} holds a dataset built from a different plan (pipeline, inputs or seed differ); remove it or choose another --output",
            storage::redact(&dir.url(""))
        )));
    }
    let listed = dir.list("").map_err(io("list", dir, ""))?;
    let ours = listed.iter().any(|n| n == ".kiln/plan.json");
    if !ours && listed.iter().any(|n| !n.starts_with(".kiln/")) {
        return Err(Error::Output(format!(
            "{} is not empty and is not a kiln dataset; refusing to write into it",
            storage::redact(&dir.url(""))
        )));
    }
    let bytes = serde_json::to_vec_pretty(plan)?;
    match dir
        .put_create(".kiln/plan.json", bytes)
        .map_err(io("write", dir, ".kiln/plan.json"))?
    {
        Created::Written => {}
        Created::Exists(there) => {
            let old: Plan = serde_json::from_slice(&there)?;
            if old.hash != plan.hash {
                return Err(Error::Output(format!(
                    "{} holds a partial build of a different plan ({}); remove it or choose another --output",
                    storage::redact(&dir.url("")),
                    super::plan::what_changed(&old, plan)
                )));
            }
        }
    }
    if parallel
        && !dir
            .probe_create_only(attempt)
            .map_err(io("probe", dir, ".kiln/"))?
    {
        return Err(Error::Output(format!(
            "the store of {} ignores create-only writes (If-None-Match), so parallel tasks cannot agree on who finished a task; run the job as one process (without --task)",
            storage::redact(&dir.url(""))
        )));
    }
    Ok(Start::Open(listed))
}

/// Build the dataset (or this process's share of it) into an object store.
pub fn run(pipeline: &Pipeline, opts: &RunOptions, location: &str) -> Result<Outcome> {
    let started = Instant::now();
    let dir = open_dir(location)?;
    let plan = Plan::make(pipeline)?;
    let attempt = attempt_id();
    let parallel = opts.shard_of.is_some() || opts.no_commit || opts.prepare_only;
    let listed = match prepare(&dir, &plan, parallel, &attempt)? {
        Start::Complete(m) => return Ok(Outcome::UpToDate(*m)),
        Start::Open(listed) => listed,
    };
    let spool = Spool::new(&attempt)?;
    let local = spool.0.as_path();
    // What earlier fits of this plan left (the tokenizer): resumed, not redone.
    for name in listed {
        if !name.starts_with(".kiln/") && !name.contains('/') {
            dir.download(&name, &local.join(&name))
                .map_err(io("read", &dir, &name))?;
        }
    }
    let threads = init_threads(opts);
    super::prepare_empty_shard(pipeline, local)?;
    let stages = fit_stages(pipeline, &plan, local, threads, opts.quiet)?;
    publish_prepared(&dir, local, pipeline)?;
    if opts.prepare_only {
        return Ok(Outcome::Prepared {
            tasks: plan.tasks.len(),
        });
    }

    let done = finished_tasks(&dir)?;
    let todo = select_tasks(&plan, opts, threads, |t| done.contains(&t.index));
    let progress = Progress::new(todo.iter().map(|t| t.bytes).sum(), todo.len());
    let publish = |marker: &TaskMarker| publish_task(&dir, local, &attempt, marker);
    let env = TaskEnv {
        out: local,
        pipeline,
        plan_hash: &plan.hash,
        planned: &plan.inputs_by_path(),
        stages,
        progress: &progress,
        publish: Some(&publish),
    };
    run_tasks(&env, &todo, threads, opts.quiet)?;

    let done = finished_tasks(&dir)?;
    let remaining: Vec<usize> = (0..plan.tasks.len())
        .filter(|t| !done.contains(t))
        .collect();
    if !remaining.is_empty() || opts.no_commit {
        return Ok(Outcome::Partial {
            ran_tasks: todo.len(),
            remaining,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let manifest = commit_dir(&dir, &plan, local)?;
    Ok(Outcome::Committed {
        manifest,
        ran_tasks: todo.len(),
        seconds: started.elapsed().as_secs_f64(),
        input_bytes: progress.total_bytes,
    })
}

/// Upload what prepare made locally: the empty shard and the fits' files.
fn publish_prepared(dir: &RemoteDir, local: &Path, pipeline: &Pipeline) -> Result<()> {
    let ext = pipeline.config.output.format.extension();
    let empty = format!("part-00000.{ext}");
    let bytes = std::fs::read(local.join(".kiln/empty").join(&empty)).at("read", local)?;
    let name = format!(".kiln/empty/{empty}");
    dir.put_create(&name, bytes)
        .map_err(io("write", dir, &name))?;
    for entry in std::fs::read_dir(local).at("list", local)? {
        let entry = entry.at("list", local)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_file()) && !name.contains(".tmp") {
            let bytes = std::fs::read(entry.path()).at("read", entry.path())?;
            // Fits are deterministic: an object already there is the same.
            dir.put_create(&name, bytes)
                .map_err(io("write", dir, &name))?;
        }
    }
    Ok(())
}

/// Tasks whose marker is in the store.
fn finished_tasks(dir: &RemoteDir) -> Result<std::collections::BTreeSet<usize>> {
    Ok(dir
        .list(".kiln/tasks")
        .map_err(io("list", dir, ".kiln/tasks/"))?
        .iter()
        .filter_map(|n| {
            n.strip_prefix(".kiln/tasks/")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect())
}

/// Upload a finished task's files under this attempt's prefix, then claim
/// the task with its marker; a losing attempt deletes its files.
fn publish_task(dir: &RemoteDir, local: &Path, attempt: &str, marker: &TaskMarker) -> Result<()> {
    let from = task_dir(local, marker.task);
    let prefix = attempt_prefix(marker.task, attempt);
    let mut files: Vec<&str> = marker.shards.iter().map(|s| s.file.as_str()).collect();
    if marker.has_rejects {
        files.push("rejects.arrow");
    }
    for file in files {
        let name = format!("{prefix}/{file}");
        dir.upload(&name, &from.join(file))
            .map_err(io("upload", dir, &name))?;
        super::throttle();
    }
    let claim = RemoteMarker {
        attempt: attempt.to_string(),
        marker: marker.clone(),
    };
    let name = marker_name(marker.task);
    match dir
        .put_create(&name, serde_json::to_vec_pretty(&claim)?)
        .map_err(io("write", dir, &name))?
    {
        Created::Written => {}
        Created::Exists(_) => {
            tracing::info!(
                task = marker.task,
                "another attempt finished this task first"
            );
            dir.delete_all(&prefix)
                .map_err(io("delete", dir, &prefix))?;
        }
    }
    // A zombie attempt finishing after the commit must not leave a work
    // area in the dataset: the commit swept `.kiln/` before or after this
    // attempt wrote there; if after, the sweep took its files, if before,
    // the manifest is there now and the attempt removes them itself.
    if dir
        .exists("manifest.json")
        .map_err(io("read", dir, "manifest.json"))?
    {
        tracing::info!(task = marker.task, "the dataset was committed meanwhile");
        sweep(dir)?;
    }
    // Keep the spool small: this task's files are in the store now.
    let _ = std::fs::remove_dir_all(&from);
    Ok(())
}

/// `kiln status URL`.
pub fn status(location: &str, slots: Option<usize>) -> Result<super::Status> {
    let dir = open_dir(location)?;
    super::Status::of(
        &storage::redact(location),
        read_plan(&dir)?,
        read_manifest(&dir)?,
        slots,
        |p| {
            let done = finished_tasks(&dir)?;
            Ok((0..p.tasks.len()).filter(|t| !done.contains(t)).collect())
        },
    )
}

/// `kiln commit URL`: commit a dataset whose tasks were run separately.
pub fn commit_url(location: &str) -> Result<(Manifest, bool)> {
    let dir = open_dir(location)?;
    let Some(plan) = read_plan(&dir)? else {
        if let Some(m) = read_manifest(&dir)? {
            return Ok((m, false));
        }
        return Err(Error::Output(format!(
            "{} has no .kiln/plan.json: not a kiln output",
            storage::redact(location)
        )));
    };
    if let Some(m) = read_manifest(&dir)?
        && m.plan == plan.hash
    {
        sweep(&dir)?;
        return Ok((m, false));
    }
    let spool = Spool::new(&attempt_id())?;
    Ok((commit_dir(&dir, &plan, &spool.0)?, true))
}

/// Commit from the markers alone; see the module docs. Two processes may
/// commit at once: every step writes the same bytes, and the one whose
/// work area vanished under it finds the other's manifest.
fn commit_dir(dir: &RemoteDir, plan: &Plan, local: &Path) -> Result<Manifest> {
    match commit_steps(dir, plan, local) {
        Ok(m) => Ok(m),
        Err(e) => match read_manifest(dir)? {
            Some(m) if m.plan == plan.hash => Ok(m),
            _ => Err(e),
        },
    }
}

fn commit_steps(dir: &RemoteDir, plan: &Plan, local: &Path) -> Result<Manifest> {
    let mut markers = Vec::with_capacity(plan.tasks.len());
    let mut missing = Vec::new();
    for t in &plan.tasks {
        let name = marker_name(t.index);
        match dir.get(&name).map_err(io("read", dir, &name))? {
            Some(b) => {
                let mut m: RemoteMarker = serde_json::from_slice(&b)?;
                m.marker = m
                    .marker
                    .verified(&crate::storage::redact(&dir.url(&name)))?;
                if m.marker.plan != plan.hash {
                    return Err(Error::Output(format!(
                        "the marker of task {} belongs to another plan",
                        t.index
                    )));
                }
                markers.push(m);
            }
            None => missing.push(t.index),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Output(format!(
            "cannot commit {}: {} of {} tasks are not finished ({})",
            storage::redact(&dir.url("")),
            missing.len(),
            plan.tasks.len(),
            commit::list(&missing)
        )));
    }
    let total: usize = markers.iter().map(|m| m.marker.shards.len()).sum();
    let mut shards = Vec::with_capacity(total);
    let mut totals = Counts::default();
    let mut reject_files = Vec::new();
    let work = local.join(".kiln").join("commit");
    std::fs::create_dir_all(&work).at("create", &work)?;
    for m in &markers {
        let prefix = attempt_prefix(m.marker.task, &m.attempt);
        totals.add(&m.marker.counts);
        if m.marker.has_rejects {
            let name = format!("{prefix}/rejects.arrow");
            let to = work.join(format!("rejects-{:05}.arrow", m.marker.task));
            if !dir.download(&name, &to).map_err(io("read", dir, &name))? {
                return Err(missing_file(dir, &name));
            }
            reject_files.push(to);
        }
        for s in &m.marker.shards {
            let name = shard_name(shards.len(), total, plan.format);
            let from = format!("{prefix}/{}", s.file);
            copy(dir, &from, &name)?;
            super::throttle();
            shards.push(ManifestShard {
                file: name,
                task: m.marker.task,
                rows: s.rows,
                documents: s.documents,
                bytes: s.bytes,
                sha256: s.sha256.clone(),
            });
        }
    }
    if shards.is_empty() {
        let name = shard_name(0, 1, plan.format);
        let from = format!(".kiln/empty/part-00000.{}", plan.format.extension());
        copy(dir, &from, &name)?;
        let bytes = dir
            .get(&name)
            .map_err(io("read", dir, &name))?
            .ok_or_else(|| missing_file(dir, &name))?;
        shards.push(commit::empty_shard(name, &bytes));
    }
    let rejects_file = "rejects.arrow".to_string();
    let merged = work.join("rejects.arrow");
    crate::rejects::merge(&reject_files, &merged)?;
    dir.upload(&rejects_file, &merged)
        .map_err(io("upload", dir, &rejects_file))?;
    for (name, bytes) in loader_files(plan, &shards)? {
        dir.put(name, bytes).map_err(io("write", dir, name))?;
    }
    let manifest = commit::manifest(plan, shards, rejects_file, totals);
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    if let Created::Exists(there) =
        dir.put_create("manifest.json", bytes)
            .map_err(io("write", dir, "manifest.json"))?
    {
        let other: Manifest = serde_json::from_slice(&there)?;
        if other.plan != plan.hash {
            return Err(Error::Output(format!(
                "{} was committed from another plan meanwhile",
                storage::redact(&dir.url(""))
            )));
        }
    }
    super::throttle();
    sweep(dir)?;
    Ok(manifest)
}

/// Server-side copy; a source already gone is fine when the copy is there
/// (a repeated commit).
fn copy(dir: &RemoteDir, from: &str, to: &str) -> Result<()> {
    match dir.copy(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.exists(to).map_err(io("read", dir, to))? {
                Ok(())
            } else {
                Err(missing_file(dir, from))
            }
        }
        Err(e) => Err(io("copy", dir, from)(e)),
    }
}

fn missing_file(dir: &RemoteDir, name: &str) -> Error {
    Error::Output(format!(
        "{} is missing from the store",
        storage::redact(&dir.url(name))
    ))
}
