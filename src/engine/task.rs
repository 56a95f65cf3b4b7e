//! Running one task: read its splits, pass every batch through the stages,
//! write shards, and last of all the task's marker.
//!
//! A task writes only inside its own directory, `.kiln/tasks/NNNNN/`, which is
//! wiped when the task starts. The marker `.kiln/tasks/NNNNN.json` is written
//! atomically after every shard is complete, so a task either has a marker and
//! all its shards, or counts as not done and is redone from scratch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use super::plan::{Task, write_atomic};
use super::progress::Progress;
use crate::dataset::Counts;
use crate::error::{IoContext, Result};
use crate::pipeline::Pipeline;
use crate::rejects::RejectSink;
use crate::schema::conform;
use crate::sinks::{ShardInfo, TaskSink};
use crate::sources;
use crate::stages::{BatchContext, Stage};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMarker {
    pub task: usize,
    pub plan: String,
    pub shards: Vec<ShardInfo>,
    /// Whether the task wrote `rejects.arrow` in its directory.
    pub has_rejects: bool,
    pub counts: Counts,
    /// SHA-256 of the marker written with this field empty: a marker
    /// edited after its task wrote it is refused, naming it.
    #[serde(default)]
    pub check: String,
}

impl TaskMarker {
    fn checksum(&self) -> String {
        let unsealed = TaskMarker {
            check: String::new(),
            ..self.clone()
        };
        crate::dataset::sha256_hex(&serde_json::to_vec(&unsealed).expect("a marker serializes"))
    }

    /// The marker with its checksum.
    pub fn sealed(mut self) -> Self {
        self.check = self.checksum();
        self
    }

    /// `Err` naming the marker when it was changed after it was written.
    pub fn verified(self, shown: &str) -> Result<Self> {
        match self.check == self.checksum() {
            true => Ok(self),
            false => Err(crate::error::Error::Output(format!(
                "the task marker {shown} was changed after its task wrote it (its checksum does not match): delete it to run that task again"
            ))),
        }
    }
}

pub fn task_dir(out: &Path, task: usize) -> PathBuf {
    out.join(".kiln").join("tasks").join(format!("{task:05}"))
}

pub fn marker_path(out: &Path, task: usize) -> PathBuf {
    out.join(".kiln")
        .join("tasks")
        .join(format!("{task:05}.json"))
}

pub fn read_marker(out: &Path, task: usize) -> Result<Option<TaskMarker>> {
    let path = marker_path(out, task);
    match std::fs::read(&path) {
        Ok(b) => {
            let shown = path.display().to_string();
            let marker: TaskMarker = serde_json::from_slice(&b).map_err(|e| {
                crate::error::Error::Output(format!(
                    "the task marker {shown} is not one kiln wrote ({e}): delete it to run that task again"
                ))
            })?;
            Ok(Some(marker.verified(&shown)?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::error::Error::io_path("read", &path, e)),
    }
}

/// What a remote output does with a finished task (see [`TaskEnv::publish`]).
pub type Publish<'a> = dyn Fn(&TaskMarker) -> Result<()> + Sync + 'a;

/// What every task of a run shares.
pub struct TaskEnv<'a> {
    pub out: &'a Path,
    pub pipeline: &'a Pipeline,
    pub plan_hash: &'a str,
    /// The plan's inputs by path: a task checks its files against them.
    pub planned: &'a std::collections::HashMap<&'a str, &'a super::plan::Fingerprint>,
    pub stages: Vec<Arc<dyn Stage>>,
    pub progress: &'a Progress,
    /// Called with each finished task's marker, once its files are in
    /// `out`: a remote output uploads them and claims the task.
    pub publish: Option<&'a Publish<'a>>,
}

/// Run `task` unless another process is running it or has done it: then
/// `Ok(None)`. The task's lock is held until its marker is written.
pub fn run_task(env: &TaskEnv, task: &Task) -> Result<Option<TaskMarker>> {
    let lock_path = env
        .out
        .join(".kiln")
        .join("tasks")
        .join(format!("{:05}.lock", task.index));
    let lock = super::open_lock(&lock_path)?;
    if lock.try_lock().is_err() {
        tracing::info!(task = task.index, "another process is running this task");
        return Ok(None);
    }
    if matches!(read_marker(env.out, task.index)?, Some(m) if m.plan == env.plan_hash) {
        return Ok(None);
    }
    let marker = run_locked(env, task)?;
    if let Some(publish) = env.publish {
        publish(&marker)?;
    }
    drop(lock);
    Ok(Some(marker))
}

/// A local input of the task that is gone or changed (size or time) since
/// the plan was made is a fault, not a reject: the plan counted it, and a
/// rerun once it is back gives the clean bytes.
fn check_inputs(env: &TaskEnv, task: &Task) -> Result<()> {
    for split in &task.splits {
        let Some(planned) = env.planned.get(split.path.as_str()) else {
            continue;
        };
        // Unreadable when planned: its reader rejects it.
        if crate::storage::is_url(&split.path) || (planned.size == 0 && planned.modified_ns == 0) {
            continue;
        }
        let now = match crate::storage::stat(&split.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(crate::error::Error::Output(format!(
                    "the input {} was deleted during the run: restore it and run again (or start another output)",
                    split.path
                )));
            }
            Err(_) => continue,
        };
        if now.size != planned.size || now.modified_ns != planned.modified_ns {
            return Err(crate::error::Error::Output(format!(
                "the input {} changed during the run ({} bytes, {} when planned{}): restore it and run again (or start another output)",
                split.path,
                now.size,
                planned.size,
                if now.size == planned.size {
                    "; modified"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

fn run_locked(env: &TaskEnv, task: &Task) -> Result<TaskMarker> {
    check_inputs(env, task)?;
    let dir = task_dir(env.out, task.index);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).at("remove", &dir)?;
    }
    std::fs::create_dir_all(&dir).at("create", &dir)?;
    let pipeline = env.pipeline;
    let mut rejects = RejectSink::new(dir.join("rejects.arrow"));
    let mut sink = TaskSink::new(
        &dir,
        pipeline.dataset_schema.clone(),
        &pipeline.config.output,
    );
    let opts = pipeline.read_options();
    let mut counts = Counts::default();
    let spec_of = |s: &sources::Split| &pipeline.inputs[s.input].spec;
    for group in sources::groups(&task.splits, spec_of) {
        let spec = spec_of(&group[0]);
        let mut reader = sources::open_group(group, spec, &opts);
        loop {
            let before = rejects.total;
            let batch = reader.next_batch(&mut rejects)?;
            let read_rejects = rejects.total - before;
            counts.samples_in += read_rejects;
            env.progress
                .samples
                .fetch_add(read_rejects, Ordering::Relaxed);
            let Some(batch) = batch else { break };
            counts.samples_in += batch.num_rows() as u64;
            env.progress
                .samples
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            let (batch, filtered) = run_stages(
                &env.stages,
                batch,
                pipeline.config.seed,
                &mut rejects,
                &pipeline.dataset_schema,
            )?;
            counts.filtered += filtered;
            if let Some(len) = batch.column_by_name("length") {
                use arrow::array::AsArray;
                let len = len.as_primitive::<arrow::datatypes::UInt32Type>();
                counts.tokens += len.values().iter().map(|&l| l as u64).sum::<u64>();
            }
            sink.write(batch)?;
            super::throttle();
        }
        let bytes = group.iter().map(|s| split_bytes(s, task)).sum();
        env.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    let shards = sink.finish()?;
    counts.rows = shards.iter().map(|s| s.rows).sum();
    counts.samples_out = shards.iter().map(|s| s.documents).sum();
    counts.rejected = rejects.total;
    counts.rejected_by = rejects.counts.clone();
    let has_rejects = rejects.finish()?;
    let marker = TaskMarker {
        task: task.index,
        plan: env.plan_hash.to_string(),
        shards,
        has_rejects,
        counts,
        check: String::new(),
    }
    .sealed();
    write_atomic(
        &marker_path(env.out, task.index),
        &serde_json::to_vec_pretty(&marker)?,
    )?;
    env.progress.tasks.fetch_add(1, Ordering::Relaxed);
    Ok(marker)
}

/// A batch through `stages` in order, conformed to the dataset's `schema`:
/// the batch, and the rows the stages filtered out.
pub fn run_stages(
    stages: &[Arc<dyn Stage>],
    mut batch: RecordBatch,
    seed: u64,
    rejects: &mut RejectSink,
    schema: &SchemaRef,
) -> Result<(RecordBatch, u64)> {
    let mut filtered = 0;
    for stage in stages {
        let mut cx = BatchContext {
            seed,
            stage: stage.name(),
            rejects,
            filtered: 0,
        };
        batch = stage.process(batch, &mut cx)?;
        // A NaN or an infinity a stage made is that stage's reject.
        batch = crate::stages::columns::reject_non_finite(batch, &mut cx)?;
        filtered += cx.filtered;
    }
    Ok((conform(&batch, schema)?, filtered))
}

/// A split's share of its task's bytes, for progress.
fn split_bytes(split: &sources::Split, task: &Task) -> u64 {
    if task.splits.len() == 1 {
        task.bytes
    } else {
        (split.end - split.start).min(task.bytes)
    }
}
