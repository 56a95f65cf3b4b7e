//! `kiln train`: the loop, its evaluation and its metrics.
//!
//! The training file is read and checked ([`super::config`]) and the device
//! chosen (`device`: a CUDA GPU, in bf16 mixed precision by default, or the
//! CPU in fp32) before any data is read; then the dataset is checked against
//! the model (`shape`). The loop is one generic function over burn's backend.
//!
//! One optimiser step takes `grad_accum` micro-batches of `batch_size`
//! rows (`batch`, which also mixes `pixel_values` online): each
//! micro-batch's loss is its summed cross-entropy divided by the rows of
//! all of them, so the accumulated gradient is that of one batch of
//! `grad_accum * batch_size` rows. AdamW (decoupled weight decay),
//! gradient clipping by norm, the learning rate from [`WarmupCosine`] at
//! each step. A checkpoint is written every `checkpoint.every` steps and at
//! the end; `--resume` continues from the newest as if the run had never
//! stopped (`checkpoint`).
//!
//! The held-out samples are evaluated after each epoch (accuracy and
//! loss). Each step and each evaluation is a line of `OUT/metrics.jsonl`;
//! `OUT/plot.png` draws the loss and the learning rate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Int, Tensor};

use super::batch::{Batch, mix_rng, split, task_loss, tensors};
use super::checkpoint;
use super::config::{Precision, TrainFile};
use super::device::{CastParams, Chosen, Materialise, choose, in_f32};
use super::loader::{Dataset, Loader, LoaderConfig};
use super::model::{Dims, Fusion};
use super::schedule::WarmupCosine;
use super::shape::{Columns, dims};
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
        ),
        #[cfg(feature = "cuda")]
        (Chosen::Cuda, precision) => {
            let compute = (precision != Precision::Fp32).then_some(FloatDType::BF16);
            train_on::<Autodiff<burn::backend::Cuda>>(
                file,
                resume,
                quiet,
                burn::backend::cuda::CudaDevice::new(0),
                compute,
                match compute {
                    Some(_) => "cuda:0 (bf16, fp32 master weights)".into(),
                    None => "cuda:0 (fp32)".into(),
                },
            )
        }
    }
}

/// A single-rank loader of `columns` in the file's order.
fn loader(
    ds: &Arc<Dataset>,
    file: &TrainFile,
    columns: &[String],
    batch_size: usize,
) -> Result<Loader> {
    Loader::new(
        ds.clone(),
        LoaderConfig {
            seed: file.seed,
            batch_size,
            group_shards: file.data.group_shards,
            rank: 0,
            world: 1,
            columns: Some(columns.to_vec()),
        },
    )
}

/// One micro-batch: its loss times `share` (its rows over the step's), the
/// task weight, and the gradients on the master weights. With `compute`,
/// the forward and backward passes run in that type.
fn micro_step<B: AutodiffBackend>(
    model: &Fusion<B>,
    compute: Option<FloatDType>,
    ce: &CrossEntropyLoss<B>,
    (x, y): Batch<B>,
    share: f64,
) -> (f64, Option<f64>, GradientsParams) {
    use burn::tensor::ElementConversion;
    let cast;
    let (forward, x) = match compute {
        Some(dtype) => {
            cast = model.clone().map(&mut CastParams(dtype));
            (&cast, x.cast(dtype))
        }
        None => (model, x),
    };
    let (logits, second) = forward.forward(x);
    let mut y = y.into_iter();
    // The losses in fp32 whatever the computation's type.
    let cast_back = compute.is_some();
    let first = task_loss(
        ce,
        in_f32(logits, cast_back),
        y.next().expect("a target a task"),
    );
    let (loss, weight) = match (second, forward.task_weight(), y.next()) {
        (Some(logits2), Some(w), Some(y2)) => {
            let w = in_f32(w, cast_back);
            let other = task_loss(ce, in_f32(logits2, cast_back), y2);
            let value = w.clone().into_scalar().elem::<f64>();
            (first * w.clone() + other * (w.neg() + 1.0), Some(value))
        }
        _ => (first, None),
    };
    let loss = loss * share;
    let value = loss.clone().into_scalar().elem::<f64>();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    (value, weight, grads)
}

/// The loop, on backend `B` and `device`.
fn train_on<B: AutodiffBackend>(
    file: &TrainFile,
    resume: Option<&Path>,
    quiet: bool,
    device: B::Device,
    compute: Option<FloatDType>,
    device_name: String,
) -> Result<Summary> {
    let o = &file.optim;
    // A dataset in an object store is read from a checked local copy.
    let data = crate::dataset::local_copy(&file.data.path)?;
    let ds = Arc::new(Dataset::open(&data)?);
    let (d, cols) = dims(file, &ds)?;
    let out = PathBuf::from(&file.output.path);
    std::fs::create_dir_all(out.join("checkpoints")).at("create", &out)?;
    let train_rows = (ds.rows as f64 * (1.0 - file.data.validation)).ceil() as u64;
    let per_step = (o.batch_size * o.grad_accum) as u64;
    let total = o
        .max_steps
        .unwrap_or(o.epochs * train_rows.div_ceil(per_step).max(1));
    let schedule = WarmupCosine {
        lr_max: o.lr,
        lr_min: o.lr_min,
        warmup_steps: o.warmup_steps,
        total_steps: total,
    };
    B::seed(&device, file.seed);
    let mut model: Fusion<B> = Fusion::new(&d, &device).map(&mut Materialise);
    let mut optim_cfg = AdamWConfig::new().with_weight_decay(o.weight_decay as f32);
    if let Some(c) = o.clip_norm {
        optim_cfg = optim_cfg.with_grad_clipping(Some(GradientClippingConfig::Norm(c as f32)));
    }
    let mut optim = optim_cfg.init::<B, Fusion<B>>();
    let columns = cols.names();
    let mut loader = loader(&ds, file, &columns, o.batch_size)?;
    let mut step = 0u64;
    if let Some(dir) = resume {
        let (ckpt, state);
        (model, optim, ckpt, state) = checkpoint::load(dir, &d, model, optim, &device)?;
        loader.seek(state.position);
        step = state.step;
        if !quiet {
            eprintln!("kiln: resumed from {} at step {step}", ckpt.display());
        }
    }
    if !quiet {
        eprintln!("kiln: training on {device_name}");
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("metrics.jsonl"))
        .at("open", out.join("metrics.jsonl"))?;
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
    while step < end {
        // Gather the micro-batches of one step (train rows only).
        let mut micro: Vec<Batch<B>> = Vec::new();
        let epoch = loader.position().epoch;
        let loading = Instant::now();
        let mut epoch_over = false;
        while micro.len() < o.grad_accum {
            let at = loader.position();
            match loader.next_batch()? {
                None => {
                    epoch_over = true;
                    break;
                }
                Some(b) => {
                    let b = split(&b, file.data.validation, false)?;
                    let mut rng = file.mix.as_ref().map(|_| mix_rng(file.seed, at));
                    let mix = file.mix.as_ref().zip(rng.as_mut());
                    if let Some(t) = tensors::<B>(&b, &cols, &d, &device, &mut skipped, mix)? {
                        micro.push(t);
                    }
                }
            }
        }
        // The time the step waited for its batches: read, split, assembled.
        let data_s = loading.elapsed().as_secs_f64();
        if !micro.is_empty() {
            let rows: usize = micro.iter().map(|(_, y)| y[0].rows()).sum();
            let mut accumulator = GradientsAccumulator::<Fusion<B>>::new();
            let mut loss_sum = 0.0;
            let mut weight = None;
            for batch in micro {
                let share = batch.1[0].rows() as f64 / rows as f64;
                let (loss, w, g) = micro_step(&model, compute, &loss_fn, batch, share);
                loss_sum += loss;
                weight = w.or(weight);
                accumulator.accumulate(&model, g);
            }
            let grads = accumulator.grads();
            let lr = schedule.lr(step);
            let grad_norm = grad_norm(&model, &grads);
            model = optim.step(lr, model, grads);
            step += 1;
            seen += rows as u64;
            let rate = seen as f64 / started.elapsed().as_secs_f64();
            if let Some(bar) = &bar {
                bar.set_position(step);
                bar.set_message(format!(
                    "loss {loss_sum:.4} lr {lr:.2e} {rate:.0} samples/s"
                ));
            }
            write_line(
                &mut metrics,
                serde_json::json!({
                    "step": step, "epoch": epoch, "loss": loss_sum, "lr": lr,
                    "grad_norm": grad_norm, "task_weight": weight,
                    "samples_per_s": rate, "data_s": data_s,
                }),
            )?;
            if step.is_multiple_of(file.checkpoint.every.max(1)) || step == end {
                checkpoint::save(&out, &model, &optim, step, loader.position(), &d, file)?;
            }
        }
        if epoch_over || step == end {
            let e = evaluate(&model.valid(), &ds, file, &cols, &d, &columns)?;
            let (acc, loss) = (e.accuracy, e.loss);
            accuracy = acc;
            write_line(
                &mut metrics,
                serde_json::json!({"epoch": epoch, "step": step, "val_accuracy": acc, "val_loss": loss, "val_accuracy_2": e.accuracy2, "skipped": skipped, "device": device_name}),
            )?;
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
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    drop(metrics);
    plot_metrics(&out)?;
    Ok(Summary {
        steps: step,
        accuracy,
        device: device_name,
        output: out,
    })
}

/// `plot.png` from every step in `metrics.jsonl` (a step logged twice, by
/// a run resumed from an earlier checkpoint, counts once: its last line).
fn plot_metrics(out: &Path) -> Result<()> {
    let path = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).at("read", &path)?;
    let mut steps: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if let (Some(step), Some(loss), Some(lr)) =
            (v["step"].as_u64(), v["loss"].as_f64(), v["lr"].as_f64())
        {
            steps.insert(step, (loss, lr));
        }
    }
    let (loss, lr): (Vec<f64>, Vec<f64>) = steps.into_values().unzip();
    super::plot::write(&out.join("plot.png"), &loss, &lr)
        .map_err(|e| Error::Execution(format!("cannot write plot.png: {e}")))
}

/// The global L2 norm of the gradient (before clipping).
fn grad_norm<B: AutodiffBackend>(model: &Fusion<B>, grads: &GradientsParams) -> f64 {
    use burn::tensor::ElementConversion;
    struct Norm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Norm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.sum = Some(match self.sum.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut v = Norm::<B> { grads, sum: None };
    model.visit(&mut v);
    // One read of the device, for all the parameters.
    v.sum.map_or(0.0, |s| s.into_scalar().elem::<f64>()).sqrt()
}

/// What the held-out samples say: accuracy and mean loss of the first
/// task, accuracy of the second.
struct Evaluation {
    accuracy: Option<f64>,
    loss: Option<f64>,
    accuracy2: Option<f64>,
}

/// Accuracy and mean loss on the held-out samples.
fn evaluate<B: Backend>(
    model: &Fusion<B>,
    ds: &Arc<Dataset>,
    file: &TrainFile,
    cols: &Columns,
    d: &Dims,
    columns: &[String],
) -> Result<Evaluation> {
    use burn::tensor::ElementConversion;
    let device = model.devices().into_iter().next().unwrap_or_default();
    let mut loader = loader(ds, file, columns, 64)?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (mut right, mut right2, mut total, mut loss_sum) = (0u64, 0u64, 0u64, 0.0f64);
    let mut skipped = 0;
    while let Some(b) = loader.next_batch()? {
        let b = split(&b, file.data.validation, true)?;
        let Some((x, y)) = tensors::<B>(&b, cols, d, &device, &mut skipped, None)? else {
            continue;
        };
        let mut y = y.into_iter();
        let y1 = y.next().expect("a target a task").hard()?;
        let n = y1.dims()[0] as u64;
        let (logits, second) = model.forward(x);
        loss_sum += loss_fn
            .forward(logits.clone(), y1.clone())
            .into_scalar()
            .elem::<f64>()
            * n as f64;
        let correct = |logits: Tensor<B, 2>, y: Tensor<B, 1, Int>| {
            let predicted = logits.argmax(1).squeeze_dim::<1>(1);
            predicted.equal(y).int().sum().into_scalar().elem::<i64>() as u64
        };
        right += correct(logits, y1);
        if let (Some(l2), Some(y2)) = (second, y.next()) {
            right2 += correct(l2, y2.hard()?);
        }
        total += n;
    }
    let share = |r: u64| (total > 0).then(|| r as f64 / total as f64);
    Ok(Evaluation {
        accuracy: share(right),
        loss: (total > 0).then(|| loss_sum / total as f64),
        accuracy2: (d.classes2 > 0).then(|| share(right2)).flatten(),
    })
}

fn write_line(out: &mut std::fs::File, v: serde_json::Value) -> Result<()> {
    writeln!(out, "{v}").map_err(|e| Error::io("write metrics.jsonl", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixing::mixed_target;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::module::ParamId;
    use burn::tensor::{DType, TensorData};

    use crate::train::batch::Target;
    use crate::train::model::Inputs;

    type B = Autodiff<NdArray<f32>>;

    fn dims() -> Dims {
        Dims {
            vocab: 11,
            max_tokens: 5,
            image: 6,
            mels: 3,
            pixels: [8, 8],
            patch: 4,
            classes: 3,
            classes2: 2,
            d_model: 8,
            heads: 2,
        }
    }

    /// A batch of 4 with every input, made of small deterministic values.
    fn batch(device: &NdArrayDevice) -> Batch<B> {
        let v = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
        let ids: Vec<i64> = (0..20).map(|i| (i * 7 % 11) as i64).collect();
        let pad: Vec<bool> = (0..20).map(|i| i % 5 > 2 + (i / 5) % 2).collect();
        let inputs = Inputs {
            text: Some((
                Tensor::from_data(TensorData::new(ids, [4, 5]), device),
                Tensor::from_data(TensorData::new(pad, [4, 5]), device),
            )),
            image: Some(Tensor::from_data(
                TensorData::new(v(24, 0.3), [4, 6]),
                device,
            )),
            pixels: Some(Tensor::from_data(
                TensorData::new(v(4 * 3 * 64, 0.07), [4, 3, 8, 8]),
                device,
            )),
            audio: Some(Tensor::from_data(
                TensorData::new(v(24, 0.5), [4, 2, 3]),
                device,
            )),
        };
        let soft: Vec<f32> = (0..4)
            .flat_map(|i| mixed_target(i % 3, 2 - i % 3, 0.7, 3, 0.1))
            .collect();
        let targets = vec![
            Target::Soft(Tensor::from_data(TensorData::new(soft, [4, 3]), device)),
            Target::Hard(Tensor::from_data(
                TensorData::new(vec![0i64, 1, 1, 0], [4]),
                device,
            )),
        ];
        (inputs, targets)
    }

    /// Each parameter's gradient, by id.
    fn gradients(model: &Fusion<B>, grads: &GradientsParams) -> Vec<(ParamId, Vec<f32>)> {
        struct Collect<'a>(&'a GradientsParams, Vec<(ParamId, Vec<f32>)>);
        impl burn::module::ModuleVisitor<B> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let g = self.0.get::<NdArray<f32>, D>(param.id).expect("a gradient");
                assert_eq!(
                    g.dtype(),
                    DType::F32,
                    "the master weights' gradient is fp32"
                );
                self.1
                    .push((param.id, g.into_data().to_vec::<f32>().unwrap()));
            }
        }
        let mut c = Collect(grads, Vec::new());
        model.visit(&mut c);
        c.1
    }

    #[test]
    fn a_cast_compute_copy_gives_the_master_weights_their_gradients() {
        // The CPU backend has no bf16, so the compute copy is f64 here: the
        // same casts, the same graph back to the fp32 master weights.
        let device = NdArrayDevice::Cpu;
        B::seed(&device, 7);
        let model = Fusion::<B>::new(&dims(), &device).map(&mut Materialise);
        let ce = CrossEntropyLossConfig::new().init(&device);
        let (l32, w32, g32) = micro_step(&model, None, &ce, batch(&device), 0.5);
        let (l64, w64, g64) = micro_step(&model, Some(FloatDType::F64), &ce, batch(&device), 0.5);
        assert!(
            (l32 - l64).abs() < 1e-5 * l32.abs().max(1.0),
            "{l32} vs {l64}"
        );
        assert!((w32.unwrap() - w64.unwrap()).abs() < 1e-6);
        let (a, b) = (gradients(&model, &g32), gradients(&model, &g64));
        assert_eq!(a.len(), b.len());
        assert!(a.len() >= 15, "every parameter has a gradient: {}", a.len());
        for ((id, x), (_, y)) in a.iter().zip(&b) {
            assert!(x.iter().any(|v| *v != 0.0), "{id}: a zero gradient");
            for (u, v) in x.iter().zip(y) {
                assert!((u - v).abs() <= 1e-4 * (1.0 + u.abs()), "{id}: {u} vs {v}");
            }
        }
        // The copy computes in its own type; the master stays fp32.
        let copy = model.clone().map(&mut CastParams(FloatDType::F64));
        let (logits, _) = copy.forward(batch(&device).0.cast(FloatDType::F64));
        assert_eq!(logits.dtype(), DType::F64);
        let (logits, _) = model.forward(batch(&device).0);
        assert_eq!(logits.dtype(), DType::F32);
    }
}
