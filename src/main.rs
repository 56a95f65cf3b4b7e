//! The `kiln` command line: parse, run, exit code. Exit codes, which tell a
//! scheduler what to retry: 0 done; 1 done but samples were rejected and
//! `--strict` was given; 2 failed, not worth retrying (bad pipeline file or
//! arguments, an output that holds another plan or another dataset, a
//! damaged dataset, a full disk, a read-only or deleted output); 3 failed,
//! worth retrying (I/O: a disk, the network, an object store).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln::config::Overrides;
use kiln::engine::{self, Outcome, RunOptions};
use kiln::pipeline::Pipeline;
use kiln::sinks::OutputFormat;
use kiln::train::{TrainDevice, TrainFile};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Build machine-learning datasets from raw files", long_about = None)]
struct Cli {
    /// More logging (-v info, -vv debug); KILN_LOG takes a tracing filter.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the dataset a pipeline file describes (or resume it).
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Replace the pipeline's single input with this path or glob.
        #[arg(long)]
        input: Option<String>,
        /// Write the dataset here instead of the pipeline's output.path.
        #[arg(long)]
        output: Option<String>,
        /// Seed of every random choice.
        #[arg(long)]
        seed: Option<u64>,
        /// Worker threads (default: all cores). Does not change the output.
        #[arg(long)]
        threads: Option<usize>,
        /// Shard format.
        #[arg(long, value_enum)]
        format: Option<OutputFormat>,
        /// Exit with 1 if any sample was rejected.
        #[arg(long)]
        strict: bool,
        /// Run only this slot of the plan's tasks (0-based; with --tasks).
        #[arg(long, requires = "tasks", conflicts_with = "task_from_env")]
        task: Option<usize>,
        /// Number of slots the plan's tasks are dealt into (with --task or
        /// --task-from-env). Always given: never read from the scheduler.
        #[arg(long)]
        tasks: Option<usize>,
        /// Take the slot from the scheduler: KILN_TASK, SLURM_ARRAY_TASK_ID
        /// or JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs), the first set.
        #[arg(long, requires = "tasks")]
        task_from_env: bool,
        /// Run the tasks but do not commit; `kiln commit OUTPUT` does.
        #[arg(long)]
        no_commit: bool,
        /// Only plan and fit: write the plan and the trained tokenizer, run
        /// no task. A job's tasks then start from them.
        #[arg(long, conflicts_with_all = ["task", "task_from_env", "no_commit"])]
        prepare: bool,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write the manifest of a dataset whose tasks were run separately.
    Commit {
        /// The dataset directory or URL.
        dir: String,
    },
    /// How far a build is, as JSON: committed, tasks, the missing ones.
    Status {
        /// The dataset directory or URL.
        dir: String,
        /// The job's slot count, to name the slots still to run.
        #[arg(long)]
        tasks: Option<usize>,
        /// Print only the missing slots, comma-separated (a Slurm
        /// `--array` list; an empty line when none). Needs --tasks.
        #[arg(long, requires = "tasks")]
        missing_slots: bool,
    },
    /// Parse and build a pipeline and check its schemas; reads no data.
    Validate {
        pipeline: PathBuf,
        #[arg(long)]
        input: Option<String>,
        #[arg(long)]
        output: Option<String>,
    },
    /// Train the bundled fusion model on a dataset `kiln run` wrote.
    Train {
        /// The training file (data, model, optimiser, checkpoints, output).
        file: PathBuf,
        /// The dataset directory, instead of the file's `data.path`.
        #[arg(long)]
        data: Option<String>,
        /// Where checkpoints and metrics go, instead of `output.path`.
        #[arg(long)]
        output: Option<String>,
        /// Continue from the newest checkpoint in this output directory.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Where to train, instead of `output.device`.
        #[arg(long, value_enum)]
        device: Option<TrainDevice>,
        /// Train data-parallel on this many local processes (ranks), as
        /// `torchrun --nproc-per-node N` would start them.
        #[arg(long, value_name = "N")]
        nproc: Option<usize>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Check every shard of a dataset against its manifest (size and
    /// SHA-256) and the manifest's counts; exit 2 naming what is damaged.
    Verify {
        /// The dataset folder.
        dataset: PathBuf,
    },
    /// Describe a dataset: schema, shards, row counts, token lengths, samples.
    Inspect {
        dataset: PathBuf,
        /// Rows to decode and show.
        #[arg(long, default_value_t = 3)]
        samples: usize,
    },
    /// One HTML page of a dataset (samples, augmentations, rejects,
    /// histograms) or of a `kiln train` output folder (charts); opens from
    /// disk with no network.
    Report {
        /// A dataset folder or URL, or a `kiln train` output folder.
        path: PathBuf,
        /// Where the page goes.
        #[arg(long, short, default_value = "report.html")]
        output: PathBuf,
        /// Originals to sample (each shown with its copies).
        #[arg(long, default_value_t = 12)]
        samples: usize,
        /// The sample's seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Read every shard: statistics over every row, every shard's
        /// checksum verified.
        #[arg(long)]
        full: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = std::env::var("KILN_LOG").unwrap_or_else(|_| format!("kiln={level}"));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kiln: error: {e}");
            ExitCode::from(if e.retriable() { 3 } else { 2 })
        }
    }
}

fn run(command: Command) -> kiln::Result<u8> {
    match command {
        Command::Run {
            pipeline,
            input,
            output,
            seed,
            threads,
            format,
            strict,
            task,
            tasks,
            task_from_env,
            no_commit,
            prepare,
            quiet,
        } => {
            let task = match task_from_env {
                true => Some(task_from(&[
                    "KILN_TASK",
                    "SLURM_ARRAY_TASK_ID",
                    "JOB_COMPLETION_INDEX",
                ])?),
                false => task,
            };
            let overrides = Overrides {
                input,
                output,
                seed,
                format,
            };
            let shard_of = match (task, tasks) {
                (Some(i), Some(n)) if n > 0 && i < n => Some((i, n)),
                (Some(i), Some(n)) => {
                    return Err(kiln::Error::Config(format!(
                        "--task {i} must be below --tasks {n}"
                    )));
                }
                (None, Some(n)) => {
                    return Err(kiln::Error::Config(format!(
                        "--tasks {n} needs --task or --task-from-env"
                    )));
                }
                _ => None,
            };
            let pipeline = Pipeline::load(&pipeline, &overrides)?;
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let outcome = engine::run(
                &pipeline,
                &RunOptions {
                    threads,
                    shard_of,
                    quiet,
                    no_commit,
                    prepare_only: prepare,
                },
            )?;
            let out = &pipeline.config.output.path;
            if !matches!(outcome, Outcome::UpToDate(_)) && !quiet {
                for line in pipeline.reports() {
                    eprintln!("kiln: {line}");
                }
            }
            let rejected = match outcome {
                Outcome::UpToDate(m) => {
                    eprintln!(
                        "kiln: nothing to do: {out} is complete ({} rows in {} shards, {} rejected); plan unchanged",
                        m.totals.rows,
                        m.shards.len(),
                        m.totals.rejected
                    );
                    m.totals.rejected
                }
                Outcome::Committed {
                    manifest,
                    ran_tasks,
                    seconds,
                    input_bytes,
                } => {
                    summary(out, &manifest, ran_tasks, seconds, input_bytes);
                    manifest.totals.rejected
                }
                Outcome::Prepared { tasks } => {
                    eprintln!(
                        "kiln: prepared {out}: the plan has {tasks} tasks; run them with --task I --tasks N, then `kiln commit {out}`"
                    );
                    0
                }
                Outcome::Partial {
                    ran_tasks,
                    remaining,
                    seconds,
                } if remaining.is_empty() => {
                    eprintln!(
                        "kiln: ran {ran_tasks} tasks in {seconds:.1}s; every task is done: `kiln commit {out}` writes the manifest"
                    );
                    0
                }
                Outcome::Partial {
                    ran_tasks,
                    remaining,
                    seconds,
                } => {
                    eprintln!(
                        "kiln: ran {ran_tasks} tasks in {seconds:.1}s; {} tasks of the plan are still to run ({}); the last one to finish, or `kiln commit {out}`, writes the manifest",
                        remaining.len(),
                        engine::commit::list(&remaining)
                    );
                    0
                }
            };
            Ok(if strict && rejected > 0 { 1 } else { 0 })
        }
        Command::Commit { dir } => {
            let (m, wrote) = engine::commit_location(&dir)?;
            if wrote {
                eprintln!(
                    "kiln: committed {dir}: {} rows in {} shards",
                    m.totals.rows,
                    m.shards.len()
                );
            } else {
                eprintln!("kiln: nothing to do: {dir} is already committed");
            }
            Ok(0)
        }
        Command::Validate {
            pipeline,
            input,
            output,
        } => {
            let overrides = Overrides {
                input,
                output,
                ..Default::default()
            };
            let p = Pipeline::load(&pipeline, &overrides)?;
            let files: usize = p.inputs.iter().map(|i| i.files.len()).sum();
            println!(
                "{}: ok ({} inputs, {files} files)",
                pipeline.display(),
                p.inputs.len()
            );
            println!("output schema:");
            for f in p.dataset_schema.fields() {
                println!("  {}: {}", f.name(), f.data_type());
            }
            Ok(0)
        }
        Command::Train {
            file,
            data,
            output,
            resume,
            device,
            nproc,
            quiet,
        } => {
            let mut cfg = TrainFile::load(&file)?;
            match nproc {
                Some(0) => {
                    return Err(kiln::Error::Config(
                        "--nproc 0: at least one process".into(),
                    ));
                }
                Some(n) if n > 1 => {
                    if std::env::var_os("WORLD_SIZE").is_some_and(|w| w != "1") {
                        return Err(kiln::Error::Config(
                            "--nproc with WORLD_SIZE set: the ranks are started already (by torchrun, srun or the scheduler)".into(),
                        ));
                    }
                    // The same command, less --nproc, once a rank.
                    let mut args: Vec<std::ffi::OsString> = Vec::new();
                    let mut skip = false;
                    for a in std::env::args_os().skip(1) {
                        if std::mem::take(&mut skip) {
                            continue;
                        }
                        match a.to_str() {
                            Some("--nproc") => skip = true,
                            Some(s) if s.starts_with("--nproc=") => {}
                            _ => args.push(a),
                        }
                    }
                    return kiln::train::launch::spawn_local(n, &args)
                        .map(|code| code.clamp(0, 255) as u8);
                }
                _ => {}
            }
            if let Some(d) = data {
                cfg.data.path = d;
            }
            if let Some(o) = output.or_else(|| resume.as_ref().map(|r| r.display().to_string())) {
                cfg.output.path = o;
            }
            if let Some(d) = device {
                cfg.output.device = d;
            }
            let s = kiln::train::train(&cfg, resume.as_deref(), quiet)?;
            if !quiet {
                eprintln!(
                    "kiln: trained {} steps on {}; validation accuracy {}; checkpoints and metrics.jsonl in {}",
                    s.steps,
                    s.device,
                    s.accuracy.map_or("n/a".into(), |a| format!("{a:.3}")),
                    s.output.display()
                );
            }
            Ok(0)
        }
        Command::Status {
            dir,
            tasks,
            missing_slots,
        } => {
            let status = engine::status(&dir, tasks)?;
            if missing_slots {
                let slots: Vec<String> = status
                    .missing_slots
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                out(&format!("{}\n", slots.join(",")));
            } else {
                out(&format!("{}\n", serde_json::to_string(&status)?));
            }
            Ok(0)
        }
        Command::Verify { dataset } => {
            let started = std::time::Instant::now();
            let m = kiln::dataset::verify(&dataset)?;
            eprintln!(
                "kiln: {} is whole: {} shards ({} bytes) match the SHA-256 of its manifest, {} rows, {} samples in = {} out + {} rejected + {} filtered ({:.1}s)",
                dataset.display(),
                m.shards.len(),
                m.bytes,
                m.totals.rows,
                m.totals.samples_in,
                m.totals.samples_out,
                m.totals.rejected,
                m.totals.filtered,
                started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        Command::Inspect { dataset, samples } => {
            out(&kiln::inspect::inspect(&dataset, samples)?);
            Ok(0)
        }
        Command::Report {
            path,
            output,
            samples,
            seed,
            full,
        } => {
            let opts = kiln::report::Options {
                samples,
                seed,
                full,
            };
            // A dataset in object storage is reported from kiln's local
            // copy of it (made once per manifest, each shard checked).
            let local = kiln::dataset::local_copy(&path.to_string_lossy())?;
            let page = kiln::report::report(&local, &opts)?;
            std::fs::write(&output, &page.html)
                .map_err(|e| kiln::error::Error::io_path("write", &output, e))?;
            for p in &page.problems {
                eprintln!("kiln: {}: {p}", path.display());
            }
            let peak = kiln::train::run::peak_rss_mb()
                .map_or(String::new(), |mb| format!("; peak memory {mb:.0} MiB"));
            eprintln!(
                "kiln: wrote {} ({} bytes; read {} bytes of {} shards{peak})",
                output.display(),
                page.html.len(),
                page.bytes_read,
                page.shards_read.len()
            );
            Ok(0)
        }
    }
}

/// Print to stdout; a closed pipe (`kiln inspect DIR | head`) is a quiet end.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush());
}

fn summary(out: &str, m: &engine::Manifest, ran_tasks: usize, seconds: f64, input_bytes: u64) {
    let t = &m.totals;
    eprintln!(
        "kiln: wrote {out}: {} samples in, {} out ({} rows, {} tokens), {} rejected, {} filtered",
        t.samples_in, t.samples_out, t.rows, t.tokens, t.rejected, t.filtered
    );
    for (reason, n) in &t.rejected_by {
        eprintln!("kiln:   rejected {reason}: {n}");
    }
    let secs = seconds.max(1e-6);
    eprintln!(
        "kiln: {} shards ({:?}), {} bytes; ran {ran_tasks} of {} tasks in {seconds:.2}s: {:.0} samples/s, {:.1} MB/s of input",
        m.shards.len(),
        m.format,
        m.bytes,
        m.tasks,
        t.samples_in as f64 / secs,
        input_bytes as f64 / secs / 1e6
    );
}

/// The task index from the first of `vars` that is set.
fn task_from(vars: &[&str]) -> kiln::Result<usize> {
    for var in vars {
        if let Ok(v) = std::env::var(var) {
            return v
                .trim()
                .parse()
                .map_err(|_| kiln::Error::Config(format!("{var}={v} is not a task index")));
        }
    }
    Err(kiln::Error::Config(format!(
        "--task-from-env: none of {} is set",
        vars.join(", ")
    )))
}
