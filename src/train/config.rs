//! The training file: its tables, their defaults, and the checks made
//! before any data is read.
//!
//! Every key is checked (`deny_unknown_fields`); a typo, a value of the
//! wrong type or a refused value is an error that names the file, the key
//! and its line, as for pipeline files ([`ConfigSource`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::distill::DistillConfig;
use super::prune::PruneConfig;
use super::quant::QuantConfig;
use crate::config::ConfigSource;
use crate::error::Result;
use crate::mixing::MixParams;

/// A training file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Online CutMix/MixUp of `pixel_values`.
    #[serde(default)]
    pub mix: Option<TrainMix>,
    /// Quantisation to int8, during training or after it.
    #[serde(default)]
    pub quant: Option<QuantConfig>,
    /// Removing the least important channels.
    #[serde(default)]
    pub prune: Option<PruneConfig>,
    /// Learning from a trained teacher too.
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    pub output: TrainOutput,
}

impl TrainFile {
    /// Read, parse and check the training file at `path`.
    pub fn load(path: &Path) -> Result<TrainFile> {
        let source = ConfigSource::read_as(path, "training")?;
        let file: TrainFile = source.parse_as()?;
        check(&file, &source)?;
        Ok(file)
    }
}

/// Online CutMix/MixUp, with timm `Mixup`'s parameters and defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainMix {
    #[serde(default)]
    pub mode: MixMode,
    #[serde(default = "default_one_f64")]
    pub mixup_alpha: f64,
    #[serde(default)]
    pub cutmix_alpha: f64,
    #[serde(default)]
    pub cutmix_minmax: Option<[f64; 2]>,
    /// Probability that a batch (or row, `elem`) is mixed at all.
    #[serde(default = "default_one_f64")]
    pub prob: f64,
    #[serde(default = "default_switch_prob")]
    pub switch_prob: f64,
    #[serde(default = "default_true")]
    pub correct_lam: bool,
    #[serde(default = "default_smoothing")]
    pub label_smoothing: f64,
}

/// One mixing per batch, or per row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MixMode {
    #[default]
    Batch,
    Elem,
}

impl TrainMix {
    /// The mixing parameters, which the offline `mix` stage holds too.
    pub(super) fn params(&self) -> MixParams {
        MixParams {
            mixup_alpha: self.mixup_alpha,
            cutmix_alpha: self.cutmix_alpha,
            cutmix_minmax: self.cutmix_minmax,
            prob: self.prob,
            switch_prob: self.switch_prob,
            correct_lam: self.correct_lam,
            label_smoothing: self.label_smoothing,
        }
    }
}

fn default_one_f64() -> f64 {
    1.0
}
fn default_switch_prob() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}
fn default_smoothing() -> f64 {
    0.1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A dataset `kiln run` wrote (Arrow shards).
    pub path: String,
    /// The share of samples held out for validation.
    #[serde(default = "default_validation")]
    pub validation: f64,
    /// Longer texts are cut to this many tokens.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Token ids are below this; by default one more than the largest id in
    /// the dataset.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// Shards shuffled together.
    #[serde(default = "default_group_shards")]
    pub group_shards: usize,
    /// The classes to learn: int64 class ids, or string names.
    #[serde(default = "default_label")]
    pub label: String,
    /// A second task's classes: the model gets a second head and learns the
    /// weight of the two losses, `w = sigmoid(linear(task_embedding[0]))`,
    /// `loss = w * loss1 + (1 - w) * loss2`.
    #[serde(default)]
    pub second_label: Option<String>,
}

fn default_label() -> String {
    "label".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// The side of the square patches `pixel_values` are cut into.
    #[serde(default = "default_patch")]
    pub patch: usize,
    /// The text's self-attention: `full`, or `sliding` (each token attends
    /// to the tokens less than `window` positions away, at a cost linear in
    /// the text's length).
    #[serde(default)]
    pub attention: Attention,
    /// The sliding window, in tokens.
    #[serde(default = "default_window")]
    pub window: usize,
}

/// The text's self-attention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    #[default]
    Full,
    Sliding,
}

fn default_window() -> usize {
    256
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            d_model: default_d_model(),
            heads: default_heads(),
            patch: default_patch(),
            attention: Attention::Full,
            window: default_window(),
        }
    }
}

fn default_patch() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "default_epochs")]
    pub epochs: u64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_one_usize")]
    pub grad_accum: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub lr_min: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Clip the gradient to this norm; none when absent.
    #[serde(default)]
    pub clip_norm: Option<f64>,
    /// The schedule's length in optimiser steps, instead of `epochs`.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Stop (with a checkpoint) after this step, as a killed run would;
    /// the schedule still spans the whole run.
    #[serde(default)]
    pub stop_after: Option<u64>,
    /// `auto`: bf16 mixed precision on a GPU, fp32 on the CPU.
    #[serde(default)]
    pub precision: Precision,
    /// Drop the last batch of an epoch when it is short (PyTorch's
    /// `DataLoader(drop_last=True)`).
    #[serde(default)]
    pub drop_last: bool,
    /// Data-parallel ranks keep AdamW's state only for the parameters each
    /// owns (ZeRO stage 1).
    #[serde(default)]
    pub zero: bool,
}

/// The float type of the forward and backward passes; the master weights
/// and the optimiser are fp32 always.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Auto,
    Fp32,
    Bf16,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            epochs: default_epochs(),
            batch_size: default_batch(),
            grad_accum: 1,
            lr: default_lr(),
            lr_min: 0.0,
            warmup_steps: 0,
            weight_decay: default_weight_decay(),
            clip_norm: None,
            max_steps: None,
            stop_after: None,
            precision: Precision::Auto,
            drop_last: false,
            zero: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Every this many steps, and at the end.
    #[serde(default = "default_every")]
    pub every: u64,
    #[serde(default = "default_keep")]
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: default_every(),
            keep: default_keep(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOutput {
    pub path: String,
    #[serde(default)]
    pub device: TrainDevice,
    /// Every this many steps, each layer's activation statistics in
    /// metrics.jsonl (and a warning when one is not finite or explodes).
    #[serde(default)]
    pub monitor_every: Option<u64>,
}

/// Where training runs (`output.device`, `--device`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrainDevice {
    /// The first CUDA GPU when one can train, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU; refused when there is none.
    Cuda,
}

fn default_validation() -> f64 {
    0.2
}
fn default_max_tokens() -> usize {
    64
}
fn default_group_shards() -> usize {
    2
}
fn default_d_model() -> usize {
    64
}
fn default_heads() -> usize {
    4
}
fn default_epochs() -> u64 {
    10
}
fn default_batch() -> usize {
    16
}
fn default_one_usize() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-3
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_every() -> u64 {
    100
}
fn default_keep() -> usize {
    3
}

/// The longest text the model takes, in tokens.
pub const MAX_TOKENS: usize = 32768;

/// What is refused before any data is read, reported at its key in
/// `source`.
fn check(file: &TrainFile, source: &ConfigSource) -> Result<()> {
    let o = &file.optim;
    for (key, value) in [
        ("optim.batch_size", o.batch_size),
        ("optim.grad_accum", o.grad_accum),
    ] {
        if value == 0 {
            return Err(source.error(key, format!("{key} must be at least 1")));
        }
    }
    if file.model.heads == 0 || !file.model.d_model.is_multiple_of(file.model.heads) {
        let key = match file.model.heads {
            0 => "model.heads",
            _ => "model.d_model",
        };
        return Err(source.error(
            key,
            format!(
                "model.d_model = {} is not a multiple of model.heads = {}",
                file.model.d_model, file.model.heads
            ),
        ));
    }
    if file.data.max_tokens == 0 || file.data.max_tokens > MAX_TOKENS {
        return Err(source.error(
            "data.max_tokens",
            format!(
                "data.max_tokens = {} is not in 1..={MAX_TOKENS}",
                file.data.max_tokens
            ),
        ));
    }
    if file.model.attention == Attention::Sliding && file.model.window == 0 {
        return Err(source.error("model.window", "model.window must be at least 1"));
    }
    if let Some(m) = &file.mix {
        m.params()
            .check()
            .map_err(|(key, why)| source.error(&format!("mix.{key}"), why))?;
    }
    if file.output.monitor_every == Some(0) {
        return Err(source.error(
            "output.monitor_every",
            "output.monitor_every must be at least 1",
        ));
    }
    if file
        .quant
        .as_ref()
        .is_some_and(|q| q.calibration_steps == 0)
    {
        return Err(source.error(
            "quant.calibration_steps",
            "quant.calibration_steps must be at least 1",
        ));
    }
    if let Some(p) = &file.prune {
        p.check().map_err(|(key, why)| source.error(key, why))?;
    }
    if let Some(d) = &file.distill {
        d.check().map_err(|(key, why)| source.error(key, why))?;
    }
    Ok(())
}
