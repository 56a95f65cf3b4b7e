//! The engine: plan, train the tokenizer if asked, run tasks on worker
//! threads, commit.
//!
//! Output directory layout:
//!
//! ```text
//! OUT/
//!   data-00000-of-00004.arrow ...  shards (or .parquet)
//!   dataset_info.json state.json   for datasets.load_from_disk
//!   tokenizer.json                 the tokenizer the ids come from
//!   rejects.arrow                  every rejected sample and why
//!   manifest.json                  shards, rows, bytes, sha256, totals: written last
//!   .kiln/plan.json                the frozen plan
//!   .kiln/lock                     held by a running `kiln run`
//!   .kiln/tasks/NNNNN/             a task's shards until commit
//!   .kiln/tasks/NNNNN.json         a task's marker: written when all its shards are
//! ```

pub mod commit;
pub mod plan;
pub mod progress;
pub mod task;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::AsArray;
use tokenizers::Tokenizer;

use crate::error::{Error, IoContext, Result};
use crate::pipeline::{Pipeline, TokenizerSource};
use crate::rejects::RejectSink;
use crate::sources;
use crate::stages::{BatchContext, Stage};
pub use commit::Manifest;
use plan::{Plan, Task};
use progress::Progress;
use task::{TaskEnv, TaskMarker};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub threads: usize,
    /// Run only the tasks `t` with `t % n == i`.
    pub shard_of: Option<(usize, usize)>,
    /// No progress output.
    pub quiet: bool,
}

/// What a run did.
#[derive(Debug)]
pub enum Outcome {
    /// The dataset was already complete.
    UpToDate(Manifest),
    /// The dataset is complete now.
    Committed {
        manifest: Manifest,
        ran_tasks: usize,
        seconds: f64,
        input_bytes: u64,
    },
    /// This process's tasks are done; others remain.
    Partial {
        ran_tasks: usize,
        remaining: Vec<usize>,
        seconds: f64,
    },
}

fn kiln_dir(out: &Path) -> PathBuf {
    out.join(".kiln")
}

/// Locks on the output directory, released when dropped.
pub struct OutputLock {
    _files: Vec<File>,
}

fn open_lock(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at("open", path)
}

/// Wait for the named lock in `.kiln/`; held until the file is dropped.
fn wait_lock(out: &Path, name: &str) -> Result<File> {
    let path = kiln_dir(out).join(name);
    let f = open_lock(&path)?;
    f.lock().at("lock", &path)?;
    Ok(f)
}

/// Sleep after each batch and each commit rename when `KILN_THROTTLE_MS` is
/// set: tests slow a run down to kill it at chosen points. Read once.
pub fn throttle() {
    static DELAY: std::sync::LazyLock<Option<std::time::Duration>> =
        std::sync::LazyLock::new(|| {
            std::env::var("KILN_THROTTLE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis)
        });
    if let Some(d) = *DELAY {
        std::thread::sleep(d);
    }
}

impl OutputLock {
    /// A whole run or a commit: nobody else may write.
    pub fn exclusive(out: &Path) -> Result<OutputLock> {
        let f = open_lock(&kiln_dir(out).join("lock"))?;
        if f.try_lock().is_err() {
            return Err(Error::Output(format!(
                "another kiln process is writing to {} (its lock .kiln/lock is held); refusing to run a second one on the same output",
                out.display()
            )));
        }
        Ok(OutputLock { _files: vec![f] })
    }

    /// One slot of a `--task I --tasks N` job: other slots may run beside
    /// it; each task is locked by whoever runs it.
    pub fn slot(out: &Path, i: usize, n: usize) -> Result<OutputLock> {
        let f = open_lock(&kiln_dir(out).join("lock"))?;
        if f.try_lock_shared().is_err() {
            return Err(Error::Output(format!(
                "a whole-job kiln run is writing to {}; refusing to run task {i} of {n} beside it",
                out.display()
            )));
        }
        Ok(OutputLock { _files: vec![f] })
    }
}

/// Create the output directory and check that it holds nothing but this
/// plan's work. Returns `Some(manifest)` if the dataset is already complete.
fn prepare_output(out: &Path, plan: &Plan) -> Result<Option<Manifest>> {
    std::fs::create_dir_all(kiln_dir(out).join("tasks")).at("create", out)?;
    if let Some(m) = Manifest::read(out)? {
        if m.plan == plan.hash {
            return Ok(Some(m));
        }
        return Err(Error::Output(format!(
            "{} holds a dataset built from a different plan (pipeline, inputs or seed differ); remove it or choose another --output",
            out.display()
        )));
    }
    let plan_path = kiln_dir(out).join("plan.json");
    // Slots of a job starting together compare and write the plan one at a time.
    let _held = wait_lock(out, "prepare.lock")?;
    let existing = Plan::read(&plan_path)?;
    if existing.is_none() {
        let stray = std::fs::read_dir(out)
            .at("list", out)?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name() != ".kiln");
        if stray {
            return Err(Error::Output(format!(
                "{} is not empty and is not a kiln dataset; refusing to write into it",
                out.display()
            )));
        }
    }
    match existing {
        Some(old) if old.hash != plan.hash => {
            return Err(Error::Output(format!(
                "{} holds a partial build of a different plan (pipeline, inputs or seed changed since); remove it or choose another --output",
                out.display()
            )));
        }
        Some(_) => {}
        None => plan.write(&plan_path)?,
    }
    Ok(None)
}

/// Build the dataset (or this process's share of it).
pub fn run(pipeline: &Pipeline, opts: &RunOptions) -> Result<Outcome> {
    let started = Instant::now();
    let out = PathBuf::from(&pipeline.config.output.path);
    let plan = Plan::make(pipeline)?;
    std::fs::create_dir_all(kiln_dir(&out)).at("create", &out)?;
    let _lock = match opts.shard_of {
        Some((i, n)) => OutputLock::slot(&out, i, n)?,
        None => OutputLock::exclusive(&out)?,
    };
    if let Some(m) = prepare_output(&out, &plan)? {
        return Ok(Outcome::UpToDate(m));
    }
    let threads = opts.threads.max(1);
    // Stages run their per-row work (decoding, inference) on rayon's pool:
    // `--threads` bounds it too. The first run of a process sets it.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    let tokenizer = prepare_tokenizer(pipeline, &plan, &out, threads, opts.quiet)?;
    prepare_empty_shard(pipeline, &out)?;
    let label_counts = match pipeline.balance_column() {
        Some(column) => {
            if !opts.quiet {
                eprintln!("kiln: counting `{column}` labels to balance them");
            }
            Some(label_counts(pipeline, &plan, threads, column)?)
        }
        None => None,
    };
    let stages = pipeline.stages(tokenizer, label_counts.as_ref());
    if label_counts.is_some() && !opts.quiet {
        // The copies each label gets, known only now.
        for line in stages
            .iter()
            .filter(|s| s.name() == "augment_text")
            .filter_map(|s| s.report())
        {
            eprintln!("kiln: {line}");
        }
    }

    let todo: Vec<&Task> = plan
        .tasks
        .iter()
        .filter(|t| opts.shard_of.is_none_or(|(i, n)| t.index % n == i))
        .filter(|t| !matches!(task::read_marker(&out, t.index), Ok(Some(m)) if m.plan == plan.hash))
        .collect();
    tracing::info!(
        tasks = plan.tasks.len(),
        todo = todo.len(),
        threads,
        "running"
    );
    let progress = Progress::new(todo.iter().map(|t| t.bytes).sum(), todo.len());
    let env = TaskEnv {
        out: &out,
        pipeline,
        plan_hash: &plan.hash,
        stages,
        progress: &progress,
    };
    run_tasks(&env, &todo, threads, opts.quiet)?;

    let remaining = commit::missing_tasks(&out, &plan)?;
    if !remaining.is_empty() {
        return Ok(Outcome::Partial {
            ran_tasks: todo.len(),
            remaining,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let manifest = commit_locked(&out, &plan)?;
    Ok(Outcome::Committed {
        manifest,
        ran_tasks: todo.len(),
        seconds: started.elapsed().as_secs_f64(),
        input_bytes: progress.total_bytes,
    })
}

/// Commit under the commit lock, so that two processes finishing their last
/// tasks at once commit once.
fn commit_locked(out: &Path, plan: &Plan) -> Result<Manifest> {
    let _held = wait_lock(out, "commit.lock")?;
    if let Some(m) = Manifest::read(out)?
        && m.plan == plan.hash
    {
        return Ok(m);
    }
    commit::commit(out, plan)
}

/// `kiln commit DIR`: write the manifest once every task is done.
pub fn commit_dir(out: &Path) -> Result<(Manifest, bool)> {
    let plan = Plan::read(&kiln_dir(out).join("plan.json"))?.ok_or_else(|| {
        Error::Output(format!(
            "{} has no .kiln/plan.json: not a kiln output",
            out.display()
        ))
    })?;
    let _lock = OutputLock::exclusive(out)?;
    if let Some(m) = Manifest::read(out)?
        && m.plan == plan.hash
    {
        return Ok((m, false));
    }
    Ok((commit_locked(out, &plan)?, true))
}

fn run_tasks(env: &TaskEnv, todo: &[&Task], threads: usize, quiet: bool) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        let reporter = s.spawn(|| env.progress.report(quiet));
        let workers: Vec<_> = (0..threads.min(todo.len()).max(1))
            .map(|_| {
                s.spawn(|| {
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(task) = todo.get(i) else { break };
                        match task::run_task(env, task) {
                            Ok(None) => {}
                            Ok(Some(TaskMarker { task, counts, .. })) => {
                                tracing::debug!(
                                    task,
                                    rows = counts.rows,
                                    rejected = counts.rejected,
                                    "task done"
                                )
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error.lock().expect("not poisoned").get_or_insert(e);
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            if w.join().is_err() {
                failed.store(true, Ordering::Relaxed);
                first_error
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert(Error::Execution("a worker thread panicked".into()));
            }
        }
        env.progress.finish();
        let _ = reporter.join();
    });
    match first_error.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The shard a dataset gets if no row survives (see [`commit::commit`]).
fn prepare_empty_shard(pipeline: &Pipeline, out: &Path) -> Result<()> {
    let dir = kiln_dir(out).join("empty");
    let file = dir.join(format!(
        "part-00000.{}",
        pipeline.config.output.format.extension()
    ));
    let _held = wait_lock(out, "prepare.lock")?;
    if !file.exists() {
        std::fs::create_dir_all(&dir).at("create", &dir)?;
        crate::sinks::TaskSink::write_empty(
            &dir,
            pipeline.dataset_schema.clone(),
            &pipeline.config.output,
        )?;
    }
    Ok(())
}

/// Load the tokenizer, or train it on the corpus (once: the result is saved
/// as `OUT/tokenizer.json` and reused by resumed runs and other tasks).
fn prepare_tokenizer(
    pipeline: &Pipeline,
    plan: &Plan,
    out: &Path,
    threads: usize,
    quiet: bool,
) -> Result<Option<Arc<Tokenizer>>> {
    let Some((_, from)) = &pipeline.tokenize else {
        return Ok(None);
    };
    let dest = out.join("tokenizer.json");
    // Held until the tokenizer is saved, so that it is trained once.
    let _held = wait_lock(out, "train.lock")?;
    let mut tokenizer = match from {
        TokenizerSource::File { path, .. } => crate::stages::text::tokenize::load(path)?,
        TokenizerSource::Train(train) => {
            if dest.exists() {
                return Ok(Some(Arc::new(crate::stages::text::tokenize::load(&dest)?)));
            }
            if !quiet {
                eprintln!(
                    "kiln: training a byte-level BPE tokenizer (vocab {}) on {} of input",
                    train.vocab_size,
                    indicatif::HumanBytes(plan.total_bytes())
                );
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| Error::Execution(format!("thread pool: {e}")))?;
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<String>>(threads * 2);
            let mut trained = None;
            std::thread::scope(|s| -> Result<()> {
                let reader = s.spawn(move || corpus(pipeline, plan, threads, tx));
                let texts = rx.into_iter().flatten();
                trained = Some(pool.install(|| crate::stages::text::tokenize::train(train, texts)));
                reader
                    .join()
                    .map_err(|_| Error::Execution("corpus reader panicked".into()))??;
                Ok(())
            })?;
            trained.expect("trained above")?
        }
    };
    if let Some((terms, _)) = &pipeline.domain_vocab {
        crate::stages::text::tokenize::add_domain_vocab(&mut tokenizer, terms)?;
    }
    // Written beside the plan, so that the dataset directory only ever
    // holds complete files (commit sweeps temporaries there).
    let tmp = kiln_dir(out).join(format!("tokenizer.json.tmp.{}", std::process::id()));
    tokenizer
        .save(&tmp, false)
        .map_err(|e| Error::Execution(format!("cannot save the tokenizer: {e}")))?;
    std::fs::rename(&tmp, &dest).at("rename", &tmp)?;
    Ok(Some(Arc::new(tokenizer)))
}

/// Stream the corpus (after SQL) into `tx`, reading tasks on `threads`
/// threads.
fn corpus(
    pipeline: &Pipeline,
    plan: &Plan,
    threads: usize,
    tx: std::sync::mpsc::SyncSender<Vec<String>>,
) -> Result<()> {
    let opts = sources::ReadOptions {
        captions_only: true,
        ..pipeline.read_options()
    };
    let column = pipeline.text_column();
    scan(pipeline, plan, threads, &opts, &|batch| {
        let Some(col) = batch
            .column_by_name(column)
            .and_then(|c| c.as_string_opt::<i32>())
        else {
            return true;
        };
        let texts = col.iter().flatten().map(str::to_string).collect();
        tx.send(texts).is_ok()
    })
}

/// How many samples carry each value of `column` (after SQL), for stages
/// that balance labels. Null labels are not counted.
pub fn label_counts(
    pipeline: &Pipeline,
    plan: &Plan,
    threads: usize,
    column: &str,
) -> Result<HashMap<String, u64>> {
    let counts: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new());
    scan(
        pipeline,
        plan,
        threads,
        &pipeline.read_options(),
        &|batch| {
            if let Some(col) = batch
                .column_by_name(column)
                .and_then(|c| c.as_string_opt::<i32>())
            {
                let mut counts = counts.lock().expect("not poisoned");
                for label in col.iter().flatten() {
                    *counts.entry(label.to_string()).or_default() += 1;
                }
            }
            true
        },
    )?;
    Ok(counts.into_inner().expect("not poisoned"))
}

/// Read every task's batches (after SQL) on `threads` threads and hand
/// them to `each`, which returns false to stop. Rejects are not recorded
/// here: the tasks record them.
fn scan(
    pipeline: &Pipeline,
    plan: &Plan,
    threads: usize,
    opts: &sources::ReadOptions,
    each: &(dyn Fn(&arrow::array::RecordBatch) -> bool + Sync),
) -> Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let next = &next;
                s.spawn(move || -> Result<()> {
                    let mut rejects = RejectSink::discard();
                    while let Some(task) = plan.tasks.get(next.fetch_add(1, Ordering::Relaxed)) {
                        for split in &task.splits {
                            let mut reader =
                                sources::open(split, &pipeline.inputs[split.input].spec, opts);
                            while let Some(mut batch) = reader.next_batch(&mut rejects)? {
                                if let Some(sql) = &pipeline.sql {
                                    let mut cx = BatchContext {
                                        seed: 0,
                                        stage: sql.name(),
                                        rejects: &mut rejects,
                                        filtered: 0,
                                    };
                                    batch = sql.process(batch, &mut cx)?;
                                }
                                if !each(&batch) {
                                    return Ok(());
                                }
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| Error::Execution("input reader panicked".into()))??;
        }
        Ok(())
    })
}
