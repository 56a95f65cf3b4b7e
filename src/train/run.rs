//! `kiln train`: the loop, its evaluation and its metrics.
//!
//! The training file is read and checked ([`super::config`]) and the device
//! chosen (`device`: a CUDA GPU, in bf16 mixed precision by default, or the
//! CPU in fp32) before any data is read; then the dataset is checked against
//! the model (`shape`). The loop is one generic function over burn's backend.
//!
//! An epoch is every training row once (the held-out rows are never
//! trained on), cut into global batches of `batch_size` rows a rank; the
//! last may be short, or is dropped with `optim.drop_last`. One optimiser
//! step takes `grad_accum` of them (`batch`, which also mixes
//! `pixel_values` online): each micro-batch's loss is its mean
//! cross-entropy weighted by its share of the step's rows, so the
//! accumulated gradient is that of one batch of `grad_accum * batch_size`
//! rows. AdamW (decoupled weight decay), gradient clipping by norm, the
//! learning rate from [`WarmupCosine`] at each step; `epochs` epochs make
//! `epochs * ceil(batches / grad_accum)` steps. A checkpoint is written
//! every `checkpoint.every` steps and at the end; `--resume` continues
//! from the newest as if the run had never stopped (`checkpoint`).
//!
//! Data parallelism: with `WORLD_SIZE` ranks ([`super::collective`]) each
//! rank reads its own rows of every global batch (the loader's rank
//! split), computes its gradient, and the ranks' gradients are averaged
//! weighted by the rows each saw, so N ranks take the step one rank takes
//! with `grad_accum` N times larger (`ddp`). Every rank then takes the
//! same AdamW step, or with `optim.zero` only for the parameters it owns
//! and the new weights are gathered. Rank 0 writes checkpoints, metrics and
//! the plot.
//!
//! The held-out samples are evaluated after each epoch (accuracy and
//! loss; each rank its share). Each step and each evaluation is a line of
//! `OUT/metrics.jsonl`; `OUT/plot.svg` draws the loss and the learning
//! rate with their axes, and `kiln report OUT` the whole run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, Optimizer};
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;

use super::batch::{Batch, mix_rng, tensors};
use super::checkpoint::{self, At};
use super::collective::DistEnv;
use super::compress::{Compress, activations, finish_int8};
use super::config::{Precision, TrainFile};
use super::ddp::{self, Ranks, Reduced};
use super::device::{Chosen, Materialise, choose};
use super::evaluate::evaluate;
use super::loader::{Dataset, Holdout, Loader, LoaderConfig, Position};
use super::model::Fusion;
use super::schedule::WarmupCosine;
use super::shape::dims;
use super::step::{StepWith, grad_norm, micro_step};
use crate::error::{Error, IoContext, Result};

/// What a run did, for the CLI's summary.
pub struct Summary {
    pub steps: u64,
    pub accuracy: Option<f64>,
    pub device: String,
    pub output: PathBuf,
}

/// Train as `file` ([`TrainFile::load`] read and checked it) says; `resume`
/// continues from the newest checkpoint in that output directory.
pub fn train(file: &TrainFile, resume: Option<&Path>, quiet: bool) -> Result<Summary> {
    let dist = DistEnv::from_env()?;
    // Only rank 0 speaks.
    let quiet = quiet || dist.as_ref().is_some_and(|e| e.rank > 0);
    let (chosen, fell_back) = choose(file.output.device)?;
    if let (Some(why), false) = (&fell_back, quiet) {
        eprintln!("kiln: training on the CPU: {why}");
    }
    match (chosen, file.optim.precision) {
        (Chosen::Cpu, Precision::Bf16) => Err(Error::Config(
            "optim.precision = \"bf16\": mixed precision is for the GPU; the CPU trains in fp32 (precision = \"auto\" or \"fp32\")".into(),
        )),
        (Chosen::Cpu, _) => train_on::<Autodiff<NdArray<f32>>>(
            file,
            resume,
            quiet,
            burn::backend::ndarray::NdArrayDevice::Cpu,
            None,
            "cpu (fp32)".into(),
            dist,
        ),
        #[cfg(feature = "cuda")]
        (Chosen::Cuda, precision) => {
            let compute = (precision != Precision::Fp32).then_some(FloatDType::BF16);
            // One GPU a local rank.
            let gpu = dist.as_ref().map_or(0, |e| e.local_rank);
            train_on::<Autodiff<burn::backend::Cuda>>(
                file,
                resume,
                quiet,
                burn::backend::cuda::CudaDevice::new(gpu),
                compute,
                match compute {
                    Some(_) => format!("cuda:{gpu} (bf16, fp32 master weights)"),
                    None => format!("cuda:{gpu} (fp32)"),
                },
                dist,
            )
        }
    }
}

/// A loader of `columns` in the file's order: rank `rank` of `world`, the
/// held-out rows or the training ones.
pub(super) fn loader(
    ds: &Arc<Dataset>,
    file: &TrainFile,
    columns: &[String],
    batch_size: usize,
    (rank, world): (usize, usize),
    held: bool,
) -> Result<Loader> {
    Loader::new(
        ds.clone(),
        LoaderConfig {
            seed: file.seed,
            batch_size,
            group_shards: file.data.group_shards,
            rank,
            world,
            columns: Some(columns.to_vec()),
            holdout: Some(Holdout {
                share: file.data.validation,
                held,
            }),
        },
    )
}

/// The loop, on backend `B` and `device`.
#[allow(clippy::too_many_arguments)]
fn train_on<B: AutodiffBackend>(
    file: &TrainFile,
    resume: Option<&Path>,
    quiet: bool,
    device: B::Device,
    compute: Option<FloatDType>,
    device_name: String,
    dist: Option<DistEnv>,
) -> Result<Summary> {
    let o = &file.optim;
    let (rank, world) = dist.as_ref().map_or((0, 1), |e| (e.rank, e.world));
    // A dataset in an object store is read from a checked local copy.
    let data = crate::dataset::local_copy(&file.data.path)?;
    let ds = Arc::new(Dataset::open(&data)?);
    let (mut d, cols) = dims(file, &ds)?;
    let run = checkpoint::identity(file, &data, world)?;
    let out = PathBuf::from(&file.output.path);
    let columns = cols.names();
    let mut loader = loader(&ds, file, &columns, o.batch_size, (rank, world), false)?;
    let train_rows = loader.epoch_rows();
    if train_rows == 0 {
        return Err(Error::Config(format!(
            "data.validation = {} holds out every one of the {} rows: nothing to train on",
            file.data.validation, ds.rows
        )));
    }
    // Global batches: `batch_size` rows a rank.
    let global = (o.batch_size * world) as u64;
    let batches = match o.drop_last {
        true => train_rows / global,
        false => train_rows.div_ceil(global),
    };
    if batches == 0 {
        return Err(Error::Config(format!(
            "optim.drop_last: the {train_rows} training rows make no full batch of {} (batch_size {} x {world} ranks)",
            global, o.batch_size
        )));
    }
    let per_epoch = batches.div_ceil(o.grad_accum as u64);
    let total = o.max_steps.unwrap_or(o.epochs * per_epoch);
    let schedule = WarmupCosine {
        lr_max: o.lr,
        lr_min: o.lr_min,
        warmup_steps: o.warmup_steps,
        total_steps: total,
    };
    // The teacher and the pruning schedule, checked before the model is made.
    let mut compress = Compress::<B>::new(file, &d, &device, total)?;
    B::seed(&device, file.seed);
    let mut model: Fusion<B> = ddp::numbered(Fusion::new(&d, &device).map(&mut Materialise));
    let mut optim_cfg = AdamWConfig::new().with_weight_decay(o.weight_decay as f32);
    if let Some(c) = o.clip_norm {
        optim_cfg = optim_cfg.with_grad_clipping(Some(GradientClippingConfig::Norm(c as f32)));
    }
    let mut optim = optim_cfg.clone().init::<B, Fusion<B>>();
    // The ranks meet: the same run on every one, or none starts.
    let mut ranks = match &dist {
        Some(e) => Some(Ranks::join(e, &run, &model, o.zero)?),
        None => None,
    };
    let sharded = ranks.as_ref().is_some_and(|r| r.sharded);
    if rank == 0 {
        std::fs::create_dir_all(out.join("checkpoints")).at("create", &out)?;
    }
    let mut at = At::default();
    let mut step = 0u64;
    if let Some(dir) = resume {
        let (ckpt, state) = checkpoint::open(dir, &d, &run, file.prune.is_some())?;
        if state.dims != d {
            // Pruned before the checkpoint: the narrower model.
            d = state.dims;
            model = ddp::numbered(Fusion::new(&d, &device).map(&mut Materialise));
            optim = optim_cfg.init::<B, Fusion<B>>();
            if let Some(r) = ranks.as_mut() {
                r.reshape(&model);
            }
        }
        (model, optim) = checkpoint::load(&ckpt, model, optim, &device, rank, sharded)?;
        compress.restore(&state.compress);
        at = state.at;
        step = state.step;
        if !quiet {
            eprintln!("kiln: resumed from {} at step {step}", ckpt.display());
        }
    }
    loader.seek(Position {
        epoch: at.epoch,
        rows: loader.rank_share(at.batches * global),
    });
    if let Some(r) = ranks.as_mut() {
        r.same_weights(&model)?;
    }
    if !quiet {
        match world {
            1 => eprintln!("kiln: training on {device_name}"),
            n => eprintln!(
                "kiln: training on {n} ranks, rank 0 on {device_name}{}",
                if sharded {
                    ", optimizer state sharded (ZeRO 1)"
                } else {
                    ""
                }
            ),
        }
    }
    let mut metrics = match rank {
        0 => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out.join("metrics.jsonl"))
                .at("open", out.join("metrics.jsonl"))?,
        ),
        _ => None,
    };
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut skipped = 0u64;
    let mut accuracy = None;
    let started = Instant::now();
    let mut seen = 0u64;
    let end = o.stop_after.map_or(total, |s| s.min(total));
    // A progress bar on a terminal: the step, loss and rate.
    let bar = (!quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(end),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
                .expect("valid template"),
        );
        bar.set_position(step);
        bar
    });
    let mut steps_in_epoch = 0u64;
    while step < end {
        // This rank's part of the step's global batches.
        let mut micro: Vec<Batch<B>> = Vec::new();
        let epoch = at.epoch;
        let loading = Instant::now();
        let mut taken = 0;
        while taken < o.grad_accum && at.batches < batches {
            let position = loader.position();
            // `None`: this rank has no row in the epoch's last batch.
            let b = loader.next_batch()?;
            at.batches += 1;
            taken += 1;
            if let Some(b) = b {
                let mut rng = file
                    .mix
                    .as_ref()
                    .map(|_| mix_rng(file.seed, position, rank));
                let mix = file.mix.as_ref().zip(rng.as_mut());
                if let Some(t) = tensors::<B>(&b, &cols, &d, &device, &mut skipped, mix)? {
                    micro.push(t);
                }
            }
        }
        let epoch_over = at.batches == batches;
        if epoch_over {
            at = At {
                epoch: epoch + 1,
                batches: 0,
            };
            loader.seek(Position {
                epoch: epoch + 1,
                rows: 0,
            });
        }
        // The time the step waited for its batches: read and assembled.
        let data_s = loading.elapsed().as_secs_f64();
        let local_rows: usize = micro.iter().map(|(_, y)| y[0].rows()).sum();
        let mut local = None;
        let mut loss_sum = 0.0;
        let mut weight = None;
        let mut kl = None;
        let mut stats = Vec::new();
        // Rank 0 writes the statistics, so only it computes them.
        let monitored = rank == 0 && compress.monitors(step);
        if !micro.is_empty() {
            let mut accumulator = GradientsAccumulator::<Fusion<B>>::new();
            compress.begin_step(step);
            for (i, batch) in micro.into_iter().enumerate() {
                let share = batch.1[0].rows() as f64 / local_rows as f64;
                let mut with = StepWith {
                    compute,
                    ce: &loss_fn,
                    quant: compress.quant.as_mut().filter(|_| compress.qat),
                    // The step's first micro-batch is its sample.
                    stats: (monitored && i == 0).then_some(&mut stats),
                    teacher: compress.teacher.as_ref(),
                };
                let m = micro_step(&model, &mut with, batch, share);
                loss_sum += m.loss;
                weight = m.weight.or(weight);
                kl = m.kl.map(|k| kl.unwrap_or(0.0) + k * share);
                accumulator.accumulate(&model, m.grads);
            }
            local = Some(accumulator.grads());
        }
        let mut save = false;
        // A step pruning scores needs every parameter's gradient.
        let scoring = compress.scores_step(step + 1);
        let reduced = match ranks.as_mut() {
            None => local.map(|grads| Reduced {
                rows: local_rows as u64,
                loss: loss_sum,
                weight,
                grad_norm: grad_norm(&model, &grads),
                grads,
                all: None,
                exchange_s: 0.0,
            }),
            Some(r) => r.average(
                &model,
                local.as_ref(),
                local_rows,
                loss_sum,
                weight,
                scoring,
            )?,
        };
        if let Some(r) = reduced {
            let lr = schedule.lr(step);
            if scoring {
                compress.score(&model, r.all.as_ref().unwrap_or(&r.grads), &d);
            }
            model = optim.step(lr, model, r.grads);
            let mut exchange_s = r.exchange_s;
            if let Some(ranks) = ranks.as_mut().filter(|r| r.sharded) {
                // Every rank gets the weights their owners stepped.
                let gather = Instant::now();
                model = ranks.gather(model)?;
                exchange_s += gather.elapsed().as_secs_f64();
            }
            step += 1;
            steps_in_epoch += 1;
            seen += r.rows;
            if let Some((pruned, narrower)) = compress.prune(step, &model, &d) {
                // The removed channels' optimizer state has nowhere to go.
                (model, d) = (ddp::numbered(pruned), narrower);
                optim = optim_cfg.clone().init::<B, Fusion<B>>();
                if let Some(ranks) = ranks.as_mut() {
                    ranks.reshape(&model);
                }
                if let Some(m) = metrics.as_mut() {
                    let a = d.attention();
                    write_line(
                        m,
                        serde_json::json!({"step": step, "pruned": compress.rounds_done, "memory": d.memory_width(), "qk": a.qk, "v": a.v, "heads": a.heads, "params": model.num_params()}),
                    )?;
                }
            }
            let rate = seen as f64 / started.elapsed().as_secs_f64();
            if let Some(bar) = &bar {
                bar.set_position(step);
                bar.set_message(format!(
                    "loss {:.4} lr {lr:.2e} {rate:.0} samples/s",
                    r.loss
                ));
            }
            if let Some(m) = metrics.as_mut() {
                write_line(
                    m,
                    serde_json::json!({
                        "step": step, "epoch": epoch, "rows": r.rows, "loss": r.loss, "lr": lr,
                        "grad_norm": r.grad_norm, "task_weight": r.weight,
                        "samples_per_s": rate, "data_s": data_s,
                        "step_s": loading.elapsed().as_secs_f64(),
                        "exchange_s": (world > 1).then_some(exchange_s),
                        "peak_rss_mb": peak_rss_mb(), "distill_kl": kl,
                    }),
                )?;
                if !stats.is_empty() {
                    let (line, warnings) = activations(step, &stats);
                    write_line(m, line)?;
                    for w in warnings {
                        match &bar {
                            Some(bar) => bar.println(w),
                            None => eprintln!("{w}"),
                        }
                    }
                }
            }
            save = step.is_multiple_of(file.checkpoint.every.max(1)) || step == end;
        }
        if epoch_over {
            if steps_in_epoch == 0 {
                return Err(Error::Execution(format!(
                    "epoch {epoch} trained no step: every one of its {train_rows} rows was skipped"
                )));
            }
            steps_in_epoch = 0;
        }
        if epoch_over || step == end {
            let (mut q, precision) = compress.eval_quant(step);
            let e = evaluate(
                &model.valid(),
                &ds,
                file,
                &cols,
                &d,
                &columns,
                (rank, world),
                ranks.as_mut().map(|r| &mut r.peer),
                skipped,
                q.as_mut(),
            )?;
            let (acc, loss) = (e.accuracy, e.loss);
            accuracy = acc;
            if let Some(m) = metrics.as_mut() {
                write_line(
                    m,
                    serde_json::json!({"epoch": epoch, "step": step, "val_accuracy": acc, "val_loss": loss, "val_accuracy_2": e.accuracy2, "val_rows": e.rows, "train_rows": train_rows, "skipped": e.skipped, "device": device_name, "ranks": world, "peak_rss_mb": peak_rss_mb(), "precision": precision, "val_samples_per_s": e.samples_per_s, "params": model.num_params()}),
                )?;
            }
            let line = format!(
                "kiln: epoch {epoch} step {step}: validation accuracy {}",
                acc.map_or("n/a".into(), |a| format!("{a:.3}"))
            );
            match &bar {
                Some(bar) => bar.println(line),
                None if !quiet => eprintln!("{line}"),
                None => {}
            }
        }
        // After the epoch's evaluation: a run resumed from this checkpoint
        // has every line before it.
        if save {
            let w = checkpoint::Writing {
                rank,
                sharded,
                peer: ranks.as_mut().map(|r| &mut r.peer),
            };
            checkpoint::save(
                &out,
                &model,
                &optim,
                step,
                at,
                &d,
                file,
                &run,
                compress.state(),
                w,
            )?;
        }
    }
    if step == total && file.quant.is_some() {
        // The int8 model, written and evaluated on integers.
        let line = finish_int8(
            &mut compress,
            &model.valid(),
            &d,
            &ds,
            file,
            &cols,
            &columns,
            (rank, world),
            ranks.as_mut().map(|r| &mut r.peer),
            &out,
        )?;
        if let Some(m) = metrics.as_mut() {
            let mut line = line;
            line["step"] = step.into();
            if !quiet {
                eprintln!(
                    "kiln: int8 model: validation accuracy {}",
                    line["val_accuracy"]
                        .as_f64()
                        .map_or("n/a".into(), |a| format!("{a:.3}"))
                );
            }
            write_line(m, line)?;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if metrics.take().is_some() {
        plot_metrics(&out)?;
    }
    Ok(Summary {
        steps: step,
        accuracy,
        device: device_name,
        output: out,
    })
}

/// This process's peak resident memory in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `plot.svg`: the loss and the learning rate against the step, with axes
/// (see [`super::plot`]; `kiln report OUT` draws the whole run).
fn plot_metrics(out: &Path) -> Result<()> {
    let svg = super::plot::plot_svg(out)?;
    let path = out.join("plot.svg");
    std::fs::write(&path, svg).at("write", &path)
}

fn write_line(out: &mut std::fs::File, v: serde_json::Value) -> Result<()> {
    writeln!(out, "{v}").map_err(|e| Error::io("write metrics.jsonl", e))
}
