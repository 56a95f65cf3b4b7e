//! The engine: plan, fit the stages that must see the input first (one
//! scan feeds them all), run tasks on worker threads, commit.
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
#[cfg(feature = "cloud")]
mod remote;
pub mod task;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;

pub use crate::dataset::Manifest;
use crate::error::{Error, IoContext, Result};
use crate::pipeline::{Pipeline, Planned};
use crate::rejects::RejectSink;
use crate::sources;
use crate::stages::{BatchContext, FitContext, Stage};
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
    /// Run the tasks but leave the commit to `kiln commit`.
    pub no_commit: bool,
    /// Only plan and fit (write the plan and the trained tokenizer), so
    /// that the tasks of a job start from them.
    pub prepare_only: bool,
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
    /// The plan and what the fits made are written; no task ran.
    Prepared { tasks: usize },
    /// This process's tasks are done; others remain, or the commit is
    /// left to `kiln commit`.
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
                "{} holds a partial build of a different plan ({}); remove it or choose another --output",
                out.display(),
                plan::what_changed(&old, plan)
            )));
        }
        Some(_) => {}
        None => plan.write(&plan_path)?,
    }
    Ok(None)
}

/// Size rayon's pool, which stages run their per-row work (decoding,
/// inference) on: `--threads` bounds it too. The first run of a process
/// sets it.
fn init_threads(opts: &RunOptions) -> usize {
    let threads = opts.threads.max(1);
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    threads
}

/// Build the dataset (or this process's share of it).
pub fn run(pipeline: &Pipeline, opts: &RunOptions) -> Result<Outcome> {
    let location = &pipeline.config.output.path;
    if crate::storage::is_url(location) {
        #[cfg(feature = "cloud")]
        return remote::run(pipeline, opts, location);
        #[cfg(not(feature = "cloud"))]
        return Err(Error::Config(crate::storage::check(location).unwrap_err()));
    }
    let started = Instant::now();
    let out = PathBuf::from(location);
    let plan = Plan::make(pipeline)?;
    std::fs::create_dir_all(kiln_dir(&out)).at("create", &out)?;
    let _lock = match opts.shard_of {
        Some((i, n)) => OutputLock::slot(&out, i, n)?,
        None => OutputLock::exclusive(&out)?,
    };
    if let Some(m) = prepare_output(&out, &plan)? {
        return Ok(Outcome::UpToDate(m));
    }
    let threads = init_threads(opts);
    prepare_empty_shard(pipeline, &out)?;
    let stages = fit_stages(pipeline, &plan, &out, threads, opts.quiet)?;
    if opts.prepare_only {
        return Ok(Outcome::Prepared {
            tasks: plan.tasks.len(),
        });
    }

    let todo = select_tasks(
        &plan,
        opts,
        threads,
        |t| matches!(task::read_marker(&out, t.index), Ok(Some(m)) if m.plan == plan.hash),
    );
    let progress = Progress::new(todo.iter().map(|t| t.bytes).sum(), todo.len());
    let env = TaskEnv {
        out: &out,
        pipeline,
        plan_hash: &plan.hash,
        planned: &plan.inputs_by_path(),
        stages,
        progress: &progress,
        publish: None,
    };
    run_tasks(&env, &todo, threads, opts.quiet)?;

    let remaining = commit::missing_tasks(&out, &plan)?;
    if !remaining.is_empty() || opts.no_commit {
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

/// The tasks of this process's slot that are not `done` yet.
fn select_tasks<'p>(
    plan: &'p Plan,
    opts: &RunOptions,
    threads: usize,
    done: impl Fn(&Task) -> bool,
) -> Vec<&'p Task> {
    let todo: Vec<&Task> = plan
        .tasks
        .iter()
        .filter(|t| opts.shard_of.is_none_or(|(i, n)| t.index % n == i))
        .filter(|t| !done(t))
        .collect();
    tracing::info!(
        tasks = plan.tasks.len(),
        todo = todo.len(),
        threads,
        "running"
    );
    todo
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

/// Where a build stands: what `kiln status` prints, and what launchers
/// read to skip finished slots and resubmit failed ones.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// The manifest is written.
    pub committed: bool,
    /// Tasks of the plan.
    pub tasks: usize,
    /// Tasks with no marker yet.
    pub missing: Vec<usize>,
    /// Slots (of `--tasks N`) that own a missing task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_slots: Option<Vec<usize>>,
}

impl Status {
    fn new(committed: bool, tasks: usize, missing: Vec<usize>, slots: Option<usize>) -> Status {
        let missing_slots = slots.map(|n| {
            let set: std::collections::BTreeSet<usize> =
                missing.iter().map(|t| t % n.max(1)).collect();
            set.into_iter().collect()
        });
        Status {
            committed,
            tasks,
            missing,
            missing_slots,
        }
    }

    /// From the plan and the manifest found at `location` (local or
    /// remote alike); `missing` lists the tasks without a marker.
    fn of(
        location: &str,
        plan: Option<Plan>,
        manifest: Option<Manifest>,
        slots: Option<usize>,
        missing: impl FnOnce(&Plan) -> Result<Vec<usize>>,
    ) -> Result<Status> {
        match (plan, manifest) {
            (Some(p), Some(m)) if m.plan == p.hash => {
                Ok(Status::new(true, p.tasks.len(), Vec::new(), slots))
            }
            (None, Some(m)) => Ok(Status::new(true, m.tasks, Vec::new(), slots)),
            (Some(p), _) => Ok(Status::new(false, p.tasks.len(), missing(&p)?, slots)),
            (None, None) => Err(Error::Output(format!(
                "{location} has no plan: not prepared yet (kiln run --prepare)"
            ))),
        }
    }
}

/// `kiln status DIR`: how far the build in `location` (a folder or a URL)
/// is. `slots` is the job's `--tasks N`, to name the slots still to run.
pub fn status(location: &str, slots: Option<usize>) -> Result<Status> {
    if crate::storage::is_url(location) {
        crate::storage::check(location).map_err(Error::Config)?;
        #[cfg(feature = "cloud")]
        return remote::status(location, slots);
    }
    let out = Path::new(location);
    Status::of(
        location,
        Plan::read(&kiln_dir(out).join("plan.json"))?,
        Manifest::read(out)?,
        slots,
        |p| commit::missing_tasks(out, p),
    )
}

/// `kiln commit DIR`: write the manifest once every task is done. `DIR`
/// may be a URL. The bool says whether this call committed.
pub fn commit_location(location: &str) -> Result<(Manifest, bool)> {
    if crate::storage::is_url(location) {
        crate::storage::check(location).map_err(Error::Config)?;
        #[cfg(feature = "cloud")]
        return remote::commit_url(location);
    }
    commit_dir(Path::new(location))
}

fn commit_dir(out: &Path) -> Result<(Manifest, bool)> {
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
        // Committed already: every shard is checked against the manifest.
        let problems = crate::dataset::verify_shards(out, &m);
        if !problems.is_empty() {
            return Err(crate::dataset::damaged(out, &problems));
        }
        return Ok((m, false));
    }
    Ok((commit_locked(out, &plan)?, true))
}

fn run_tasks(env: &TaskEnv, todo: &[&Task], threads: usize, quiet: bool) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
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
    };
    std::thread::scope(|s| {
        let reporter = s.spawn(|| env.progress.report(quiet));
        // The workers run on rayon's pool, the one the stages' per-row work
        // runs on: a worker waiting for its batch's rows works on them (and
        // on the other workers' rows) instead of sleeping beside the pool,
        // so reading and writing one task overlaps the rows of another and
        // no core idles while work is queued.
        rayon::scope(|rs| {
            for _ in 0..threads.min(todo.len()).max(1) {
                rs.spawn(|_| {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(Error::Execution("a worker thread panicked".into()));
                    }
                });
            }
        });
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

/// The stages that run on every batch, in order: `sql`, the stages built
/// ready, and the fitted ones. Fits run on one scan of the input that feeds
/// them all, unless an earlier run of the plan left what they fitted in the
/// output directory. What the stages write into the dataset directory (the
/// tokenizer) is written here, once: the fit lock is held throughout, so
/// slots of one job fit once.
fn fit_stages(
    pipeline: &Pipeline,
    plan: &Plan,
    out: &Path,
    threads: usize,
    quiet: bool,
) -> Result<Vec<Arc<dyn Stage>>> {
    let _held = wait_lock(out, "fit.lock")?;
    let cx = FitContext {
        threads,
        input_bytes: plan.total_bytes(),
    };
    let mut stages: Vec<Option<Arc<dyn Stage>>> = Vec::new();
    let mut fits = Vec::new();
    let mut fresh = Vec::new();
    for planned in &pipeline.stages {
        match planned {
            Planned::Ready(s) => {
                fresh.push(s.clone());
                stages.push(Some(s.clone()));
            }
            Planned::Fit(f) => match f.resume(out)? {
                Some(s) => stages.push(Some(s)),
                None => {
                    fits.push((stages.len(), f.clone()));
                    stages.push(None);
                }
            },
        }
    }
    if !fits.is_empty() {
        if !quiet {
            for (_, f) in &fits {
                eprintln!("kiln: {}", f.describe(&cx));
            }
        }
        let opts = sources::ReadOptions {
            captions_only: fits.iter().all(|(_, f)| f.text_only()),
            ..pipeline.read_options()
        };
        let started = std::time::Instant::now();
        let fitted = std::thread::scope(|s| -> Result<Vec<Arc<dyn Stage>>> {
            let mut senders = Vec::new();
            let mut handles = Vec::new();
            for (_, f) in &fits {
                let (tx, rx) = std::sync::mpsc::sync_channel::<RecordBatch>(threads * 2);
                senders.push(tx);
                let cx = &cx;
                handles.push(s.spawn(move || f.fit(&mut rx.into_iter(), cx)));
            }
            let scanned = scan(pipeline, plan, threads, &opts, &|batch| {
                // A fit that stopped early has failed: its error is reported
                // below; the others still see every batch.
                let mut open = false;
                for tx in &senders {
                    open |= tx.send(batch.clone()).is_ok();
                }
                open
            });
            drop(senders);
            let fitted: Vec<Result<Arc<dyn Stage>>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Execution("a fit panicked".into())))
                })
                .collect();
            scanned?;
            fitted.into_iter().collect()
        })?;
        if !quiet {
            eprintln!(
                "kiln: fitted in {:.2}s (one scan of the input)",
                started.elapsed().as_secs_f64()
            );
        }
        for ((at, _), stage) in fits.iter().zip(fitted) {
            if !quiet && let Some(line) = stage.report() {
                // What the fit decided, known only now.
                eprintln!("kiln: {line}");
            }
            fresh.push(stage.clone());
            stages[*at] = Some(stage);
        }
    }
    for stage in &fresh {
        for (name, bytes) in stage.artifacts()? {
            // Written beside the plan, so that the dataset directory only
            // ever holds complete files (commit sweeps temporaries there).
            let tmp = kiln_dir(out).join(format!("{name}.tmp.{}", std::process::id()));
            std::fs::write(&tmp, &bytes).at("write", &tmp)?;
            std::fs::rename(&tmp, out.join(name)).at("rename", &tmp)?;
        }
    }
    let mut all: Vec<Arc<dyn Stage>> = Vec::new();
    if let Some(sql) = &pipeline.sql {
        all.push(sql.clone());
    }
    all.extend(
        stages
            .into_iter()
            .map(|s| s.expect("every fit was fitted or resumed")),
    );
    Ok(all)
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
