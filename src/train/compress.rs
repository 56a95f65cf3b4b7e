//! Smaller models from the loop: quantisation ([`super::quant`]), pruning
//! ([`super::prune`]), distillation ([`super::distill`]) and activation
//! monitoring, as the loop ([`super::run`]) calls them, with what a
//! checkpoint keeps of them.
//!
//! They combine: a run may distil a teacher into a student it prunes and
//! trains through fake quantisation. Each step's order: the forward pass
//! (observing or fake-quantising, recording statistics on a monitored
//! step), the loss (with the teacher's term), the backward pass, the
//! gradients averaged over the ranks, the importance scored on them in a
//! scoring window, the optimiser's step, and after a round's last scoring
//! step the pruning.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use burn::module::Module;

use super::batch::tensors;
use super::collective::Peer;
use super::config::TrainFile;
use super::distill::Teacher;
use super::evaluate::evaluate;
use super::int8::{read_int8, write_int8};
use super::loader::Dataset;
use super::model::{Dims, Fusion};
use super::prune::{self, PruneConfig, Scores};
use super::quant::{Mode, Quantizer};
use super::run::loader;
use super::shape::Columns;
use super::tap::{Stats, Tap, alarm};
use crate::error::{IoContext, Result};

/// What a checkpoint keeps of them: the activation ranges (f32 bits), the
/// pruning round's scores and the rounds done.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct CompressState {
    #[serde(default)]
    ranges: BTreeMap<String, [u32; 2]>,
    #[serde(default)]
    scores: Scores,
    #[serde(default)]
    rounds_done: u64,
}

/// Activations past this magnitude are reported as exploding.
pub(super) const EXPLODE: f64 = 1e4;

pub(super) struct Compress<B: AutodiffBackend> {
    /// Quantisation-aware training's state (`qat = true`), or the
    /// post-training calibration's (`qat = false`, used at the end).
    pub(super) quant: Option<Quantizer>,
    /// Whether the training forward goes through `quant`.
    pub(super) qat: bool,
    calibration: u64,
    prune: Option<PruneConfig>,
    prune_steps: Vec<u64>,
    scores: Scores,
    pub(super) rounds_done: u64,
    pub(super) teacher: Option<Teacher<B::InnerBackend>>,
    monitor_every: Option<u64>,
}

impl<B: AutodiffBackend> Compress<B> {
    /// What `file` asks of a run of `total` steps of a model of `d`.
    pub(super) fn new(file: &TrainFile, d: &Dims, device: &B::Device, total: u64) -> Result<Self> {
        let teacher = match &file.distill {
            Some(c) => Some(Teacher::load(c, d, device)?),
            None => None,
        };
        let prune_steps = match &file.prune {
            Some(p) => p.steps(total)?,
            None => Vec::new(),
        };
        Ok(Compress {
            quant: file.quant.as_ref().map(|_| Quantizer::new(Mode::Observe)),
            qat: file.quant.as_ref().is_some_and(|q| q.qat),
            calibration: file.quant.as_ref().map_or(0, |q| q.calibration_steps),
            prune: file.prune.clone(),
            prune_steps,
            scores: Scores::default(),
            rounds_done: 0,
            teacher,
            monitor_every: file.output.monitor_every,
        })
    }

    pub(super) fn state(&self) -> CompressState {
        CompressState {
            ranges: self
                .quant
                .as_ref()
                .map(|q| q.ranges_bits())
                .unwrap_or_default(),
            scores: self.scores.clone(),
            rounds_done: self.rounds_done,
        }
    }

    pub(super) fn restore(&mut self, s: &CompressState) {
        if let Some(q) = self.quant.as_mut() {
            q.set_ranges_bits(&s.ranges);
        }
        self.scores = s.scores.clone();
        self.rounds_done = s.rounds_done;
    }

    /// Sets what the training forward of step `step` (0-based) does with
    /// quantisation-aware training: observe during calibration,
    /// fake-quantise after.
    pub(super) fn begin_step(&mut self, step: u64) {
        let calibration = self.calibration;
        if let Some(q) = self.quant.as_mut().filter(|_| self.qat) {
            q.mode = match step < calibration {
                true => Mode::Observe,
                false => Mode::Fake,
            };
        }
    }

    /// The quantiser evaluations after `steps` steps go through (a copy,
    /// fake-quantising), and the precision they evaluate.
    pub(super) fn eval_quant(&self, steps: u64) -> (Option<Quantizer>, &'static str) {
        match self.quant.as_ref() {
            Some(q) if self.qat && steps >= self.calibration => {
                let mut q = q.clone();
                q.mode = Mode::Fake;
                (Some(q), "fake_int8")
            }
            _ => (None, "fp32"),
        }
    }

    /// Whether step `step` (0-based) records activation statistics.
    pub(super) fn monitors(&self, step: u64) -> bool {
        self.monitor_every
            .is_some_and(|n| n > 0 && (step + 1).is_multiple_of(n))
    }

    /// Whether step `step` (1-based, the step just taken) is scored for
    /// the next pruning round.
    pub(super) fn scores_step(&self, step: u64) -> bool {
        let (Some(p), Some(&at)) = (&self.prune, self.prune_steps.get(self.rounds_done as usize))
        else {
            return false;
        };
        step + p.score_steps > at && step <= at
    }

    pub(super) fn score(
        &mut self,
        model: &Fusion<B>,
        grads: &burn::optim::GradientsParams,
        d: &Dims,
    ) {
        if let Some(p) = &self.prune {
            self.scores
                .add(prune::score(model, grads, p.method, &prune::groups(d)));
        }
    }

    /// After step `step` (1-based): the pruned model and its sizes when a
    /// round prunes now.
    pub(super) fn prune(
        &mut self,
        step: u64,
        model: &Fusion<B>,
        d: &Dims,
    ) -> Option<(Fusion<B>, Dims)> {
        let p = self.prune.as_ref()?;
        (self.prune_steps.get(self.rounds_done as usize) == Some(&step)).then(|| {
            self.rounds_done += 1;
            let importance = self.scores.importance(p.method);
            let keep = prune::plan(p, d, self.rounds_done, &importance);
            self.scores = Scores::default();
            prune::apply(model, d, &keep)
        })
    }
}

/// A metrics line of the activation statistics of step `step`, and the
/// warnings they raise.
pub(super) fn activations(
    step: u64,
    stats: &[(String, Stats)],
) -> (serde_json::Value, Vec<String>) {
    let mut layers = serde_json::Map::new();
    let mut warnings = Vec::new();
    for (name, s) in stats {
        let finite = |v: f64| v.is_finite().then_some(v);
        layers.insert(
            name.clone(),
            serde_json::json!({
                "mean": finite(s[0]), "std": finite(s[1]), "max_abs": finite(s[2]),
                "zero": finite(s[3]), "saturated": finite(s[4]),
            }),
        );
        if let Some(why) = alarm(s, EXPLODE) {
            warnings.push(format!(
                "kiln: warning: step {step}: {name} activations: {why}"
            ));
        }
    }
    (
        serde_json::json!({"step": step, "activations": layers}),
        warnings,
    )
}

/// The end of a run with `[quant]`: calibrate (post-training), write
/// `OUT/model-int8.safetensors` (rank 0), read it back and evaluate it on
/// integers (each rank its share); the metrics line of that evaluation.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_int8<B: AutodiffBackend>(
    compress: &mut Compress<B>,
    model: &Fusion<B::InnerBackend>,
    d: &Dims,
    ds: &Arc<Dataset>,
    file: &TrainFile,
    cols: &Columns,
    columns: &[String],
    (rank, world): (usize, usize),
    mut peer: Option<&mut Peer>,
    out: &Path,
) -> Result<serde_json::Value> {
    let Some(q) = compress.quant.as_mut() else {
        return Ok(serde_json::Value::Null);
    };
    if !compress.qat {
        // Post-training: the float model's ranges over the first
        // calibration batches of the training rows (the same on every
        // rank).
        q.mode = Mode::Observe;
        q.ranges.clear();
        let mut l = loader(ds, file, columns, file.optim.batch_size, (0, 1), false)?;
        let device = model.devices().into_iter().next().unwrap_or_default();
        let mut skipped = 0;
        let mut n = 0;
        while n < compress.calibration {
            let Some(b) = l.next_batch()? else { break };
            let Some((x, _)) =
                tensors::<B::InnerBackend>(&b, cols, d, &device, &mut skipped, None)?
            else {
                continue;
            };
            let mut tap = Tap {
                quant: Some(&mut *q),
                stats: None,
            };
            model.forward_with(x, &mut tap);
            n += 1;
        }
    }
    let path = out.join("model-int8.safetensors");
    let tmp = out.join(".model-int8.safetensors.tmp");
    if rank == 0 {
        let bytes = write_int8(model, d, q, &tmp)?;
        debug_assert!(bytes > 0);
        std::fs::rename(&tmp, &path).at("rename", &tmp)?;
    }
    if let Some(p) = peer.as_deref_mut() {
        p.barrier()?;
    }
    let (dims, int8, mut q8) = read_int8::<burn::backend::NdArray<f32>>(
        &path,
        &burn::backend::ndarray::NdArrayDevice::Cpu,
    )?;
    let e = evaluate(
        &int8,
        ds,
        file,
        cols,
        &dims,
        columns,
        (rank, world),
        peer,
        0,
        Some(&mut q8),
    )?;
    let bytes = std::fs::metadata(&path).at("read", &path)?.len();
    Ok(serde_json::json!({
        "precision": "int8", "qat": compress.qat, "val_accuracy": e.accuracy, "val_loss": e.loss,
        "val_accuracy_2": e.accuracy2, "val_rows": e.rows, "val_samples_per_s": e.samples_per_s,
        "model_bytes": bytes, "float_bytes": model.num_params() * 4, "params": model.num_params(),
    }))
}
