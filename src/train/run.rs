//! `kiln train`: the training file, the loop, checkpoints and metrics.
//!
//! One optimiser step takes `grad_accum` micro-batches of `batch_size`
//! rows: each micro-batch's loss is its summed cross-entropy divided by the
//! rows of all of them, so the accumulated gradient is that of one batch of
//! `grad_accum * batch_size` rows. AdamW (decoupled weight decay), gradient
//! clipping by norm, the learning rate from [`WarmupCosine`] at each step.
//!
//! A checkpoint (`OUT/checkpoints/step-NNNNNNNN/`) holds the model's
//! weights (`model.safetensors`, for any reader), its record with the
//! parameter ids the optimiser's state is keyed by (`model.mpk`), the
//! optimiser's state (`optimizer.mpk`) and
//! `state.json` (step, loader position, the model's sizes); the last
//! `keep` are kept. `--resume` continues from the newest: the same
//! batches, the same updates, the same final weights as a run never
//! stopped (the model has no dropout, so no generator state is left).
//!
//! Samples are split by a hash of their `sample_id`: `validation` of them
//! are held out, evaluated after each epoch (accuracy and loss).
//!
//! Devices: `device = "auto"` trains on the first CUDA GPU when kiln was
//! built with the `cuda` feature and a driver, NVRTC and a GPU are there,
//! else on the CPU, and says which; `"cuda"` refuses to fall back. The loop
//! is one generic function over burn's backend. On the GPU the forward and
//! backward passes run in bf16 on a cast copy of the fp32 master weights,
//! whose gradients (cast back through the graph) the optimiser applies in
//! fp32 (`optim.precision`); the CPU trains in fp32.
//!
//! `[mix]` mixes `pixel_values` online, per micro-batch, as timm's `Mixup`
//! does: row i with row `n - 1 - i` (the batch flipped), one mixing per
//! batch (`mode = "batch"`) or per row (`"elem"`), drawn with the offline
//! `mix` stage's rules from a generator seeded by (seed, loader position),
//! so a resumed run mixes the same way. The targets become the smoothed
//! `onehot(y) * lam + onehot(y_partner) * (1 - lam)` and the loss the
//! cross-entropy against them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, UInt32Type};
use burn::backend::{Autodiff, NdArray};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::loader::{Dataset, Loader, LoaderConfig, Position};
use super::model::{Dims, Fusion, Inputs};
use super::schedule::WarmupCosine;
use crate::error::{Error, IoContext, Result};

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
    pub output: TrainOutput,
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
    /// The offline stage's parameters, whose drawing rules are shared.
    fn params(&self) -> crate::stages::image::mix::MixConfig {
        crate::stages::image::mix::MixConfig {
            copies: 1,
            mixup_alpha: self.mixup_alpha,
            cutmix_alpha: self.cutmix_alpha,
            cutmix_minmax: self.cutmix_minmax,
            prob: self.prob,
            switch_prob: self.switch_prob,
            correct_lam: self.correct_lam,
            label_smoothing: self.label_smoothing,
            one_hot: false,
            num_classes: None,
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
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            d_model: default_d_model(),
            heads: default_heads(),
            patch: default_patch(),
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainDevice {
    #[default]
    Auto,
    Cpu,
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

/// What a checkpoint says besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: u64,
    position: Position,
    dims: Dims,
    seed: u64,
}

/// The columns the model reads, found in the dataset.
#[derive(Debug, Clone)]
struct Columns {
    text: bool,
    image: bool,
    pixels: bool,
    audio: bool,
    /// The label columns: the task's, and the second task's if any.
    labels: Vec<LabelSpec>,
}

impl Columns {
    /// The columns the loader reads: the id (for the split), the inputs,
    /// the labels.
    fn names(&self) -> Vec<String> {
        [
            ("sample_id", true),
            ("input_ids", self.text),
            ("image_features", self.image),
            ("pixel_values", self.pixels),
            ("mel", self.audio),
        ]
        .into_iter()
        .filter(|(_, read)| *read)
        .map(|(c, _)| c.to_string())
        .chain(self.labels.iter().map(|l| l.column.clone()))
        .collect()
    }
}

/// A label column and its classes.
#[derive(Debug, Clone)]
struct LabelSpec {
    column: String,
    /// String labels (text datasets): their names, sorted, are the classes.
    /// `None` for int64 class ids.
    names: Option<std::collections::HashMap<String, i64>>,
    classes: usize,
}

/// What a label column holds: the column's type, checked.
fn label_type(ds: &Dataset, column: &str) -> Result<DataType> {
    let bad = |m: String| Error::Config(format!("{}: {m}", ds.dir.display()));
    let ty = ds
        .schema
        .field_with_name(column)
        .map_err(|_| {
            bad(format!(
                "the dataset has no `{column}` column: the trainer learns classes"
            ))
        })?
        .data_type()
        .clone();
    if ty != DataType::Int64 && ty != DataType::Utf8 {
        return Err(bad(format!(
            "`{column}` is {ty}: class ids (int64) or names (string) are what the trainer learns"
        )));
    }
    Ok(ty)
}

/// What the scan of a label column saw: the names of string labels, the
/// largest id of int64 ones.
#[derive(Default)]
struct LabelSeen {
    names: std::collections::BTreeSet<String>,
    max: i64,
}

impl LabelSeen {
    fn add(&mut self, column: &dyn Array) {
        match column.data_type() {
            DataType::Utf8 => self.names.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            ),
            _ => {
                let l = column.as_primitive::<Int64Type>();
                self.max = self.max.max(l.iter().flatten().max().unwrap_or(-1));
            }
        }
    }

    /// The classes of `column`.
    fn spec(self, ds: &Dataset, column: &str, ty: &DataType) -> Result<LabelSpec> {
        if *ty == DataType::Utf8 {
            if self.names.len() < 2 {
                return Err(Error::Config(format!(
                    "{}: `{column}` has {} distinct value(s): nothing to classify",
                    ds.dir.display(),
                    self.names.len()
                )));
            }
            return Ok(LabelSpec {
                column: column.to_string(),
                classes: self.names.len(),
                names: Some(
                    self.names
                        .into_iter()
                        .enumerate()
                        .map(|(i, n)| (n, i as i64))
                        .collect(),
                ),
            });
        }
        // Class names a media dataset declares (ClassLabel), else the ids seen.
        let declared = ds
            .schema
            .field_with_name(column)
            .ok()
            .and_then(|f| f.metadata().get(crate::schema::CLASS_NAMES).cloned())
            .and_then(|n| serde_json::from_str::<Vec<String>>(&n).ok());
        Ok(LabelSpec {
            column: column.to_string(),
            names: None,
            classes: declared.map_or((self.max + 1).max(2) as usize, |n| n.len()),
        })
    }
}

/// What a run did, for the CLI's summary.
pub struct Summary {
    pub steps: u64,
    pub accuracy: Option<f64>,
    pub device: String,
    pub output: PathBuf,
}

/// The rows of `batch` on one side of the validation split: the held-out
/// ones, or the training ones.
fn split(batch: &RecordBatch, validation: f64, held: bool) -> Result<RecordBatch> {
    let ids = batch
        .column_by_name("sample_id")
        .ok_or_else(|| Error::Execution("train: no `sample_id` in a batch".into()))?
        .as_string::<i32>();
    let keep: Vec<bool> = (0..batch.num_rows())
        .map(|r| held_out(ids.value(r), validation) == held)
        .collect();
    Ok(arrow::compute::filter_record_batch(batch, &keep.into())?)
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

/// Whether a sample is held out, from its id.
fn held_out(id: &str, share: f64) -> bool {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let v = u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes"));
    (v as f64 / u64::MAX as f64) < share
}

/// The model's sizes, checked against the dataset before training starts.
fn dims(file: &TrainFile, ds: &Dataset) -> Result<(Dims, Columns)> {
    let has = |n: &str| {
        ds.schema
            .field_with_name(n)
            .ok()
            .map(|f| f.data_type().clone())
    };
    let bad = |m: String| Error::Config(format!("{}: {m}", ds.dir.display()));
    let label_columns: Vec<(String, DataType)> = std::iter::once(&file.data.label)
        .chain(&file.data.second_label)
        .map(|c| Ok((c.clone(), label_type(ds, c)?)))
        .collect::<Result<_>>()?;
    let image = match has("image_features") {
        Some(DataType::FixedSizeList(_, n)) => n as usize,
        Some(t) => {
            return Err(bad(format!(
                "`image_features` is {t}, not fixed_list<float32>"
            )));
        }
        None => 0,
    };
    let pixels = match has("pixel_values") {
        None => [0, 0],
        Some(t) => pixel_shape(&t).ok_or_else(|| {
            bad(format!(
                "`pixel_values` is {t}, not a [3][height][width] float32 tensor"
            ))
        })?,
    };
    let (text, audio) = (has("input_ids").is_some(), has("mel").is_some());
    if !text && image == 0 && pixels[0] == 0 && !audio {
        return Err(bad(
            "the dataset has none of `input_ids`, `image_features`, `pixel_values`, `mel` for the model to read"
                .into(),
        ));
    }
    let patch = file.model.patch;
    if pixels[0] > 0 && (patch == 0 || patch > pixels[0].min(pixels[1])) {
        return Err(Error::Config(format!(
            "model.patch = {patch}: patches of pixel_values ({} x {}) must be at least 1 and at most its shorter side",
            pixels[0], pixels[1]
        )));
    }
    if file.mix.is_some() && pixels[0] == 0 {
        return Err(bad(
            "[mix] mixes `pixel_values`, which this dataset does not have: store the images with the `to_tensor` stage".into(),
        ));
    }
    if ds.rows == 0 {
        return Err(bad("the dataset is empty".into()));
    }
    // One pass for what the schema does not say: the classes, the largest
    // token id, the mel bands.
    let (mut max_id, mut mels) = (0u32, 0usize);
    let mut seen: Vec<LabelSeen> = label_columns.iter().map(|_| LabelSeen::default()).collect();
    let mut names: Vec<&str> = label_columns.iter().map(|(c, _)| c.as_str()).collect();
    if text {
        names.push("input_ids");
    }
    if audio {
        names.push("mel");
    }
    let projection = names
        .iter()
        .map(|n| ds.schema.index_of(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for i in 0..ds.shards.len() {
        let b = ds.read_shard(i, Some(&projection))?;
        for (j, s) in seen.iter_mut().enumerate() {
            s.add(b.column(j).as_ref());
        }
        if text {
            let ids = b.column(label_columns.len()).as_list::<i32>();
            max_id = max_id.max(
                ids.values()
                    .as_primitive::<UInt32Type>()
                    .values()
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(0),
            );
        }
        if audio {
            let mel = b.column(projection.len() - 1).as_list::<i32>();
            if mel.len() > 0 {
                mels = mel.value(0).len();
            }
        }
    }
    let labels = seen
        .into_iter()
        .zip(&label_columns)
        .map(|(s, (c, ty))| s.spec(ds, c, ty))
        .collect::<Result<Vec<_>>>()?;
    let columns = Columns {
        text,
        image: image > 0,
        pixels: pixels[0] > 0,
        audio,
        labels,
    };
    let vocab = match (columns.text, file.data.vocab_size) {
        (false, _) => 0,
        (true, Some(v)) if (max_id as usize) < v => v,
        (true, Some(v)) => {
            return Err(Error::Config(format!(
                "data.vocab_size = {v}, but the dataset has token id {max_id}: it was tokenized with a larger vocabulary"
            )));
        }
        (true, None) => max_id as usize + 1,
    };
    Ok((
        Dims {
            vocab,
            max_tokens: file.data.max_tokens.max(1),
            image,
            mels,
            pixels,
            patch: if pixels[0] > 0 { patch } else { 0 },
            classes: columns.labels[0].classes,
            classes2: columns.labels.get(1).map_or(0, |l| l.classes),
            d_model: file.model.d_model,
            heads: file.model.heads,
        },
        columns,
    ))
}

/// `[3][height][width]` float32 lists: the height and width.
fn pixel_shape(t: &DataType) -> Option<[usize; 2]> {
    let DataType::FixedSizeList(rows, 3) = t else {
        return None;
    };
    let DataType::FixedSizeList(cols, h) = rows.data_type() else {
        return None;
    };
    let DataType::FixedSizeList(item, w) = cols.data_type() else {
        return None;
    };
    (item.data_type() == &DataType::Float32).then_some([*h as usize, *w as usize])
}

/// A task's targets: class ids, or (mixed) class weights `[batch, classes]`.
enum Target<B: Backend> {
    Hard(Tensor<B, 1, Int>),
    Soft(Tensor<B, 2>),
}

impl<B: Backend> Target<B> {
    fn rows(&self) -> usize {
        match self {
            Target::Hard(t) => t.dims()[0],
            Target::Soft(t) => t.dims()[0],
        }
    }

    fn hard(self) -> Result<Tensor<B, 1, Int>> {
        match self {
            Target::Hard(t) => Ok(t),
            Target::Soft(_) => Err(Error::Execution(
                "train: mixed targets where class ids were expected".into(),
            )),
        }
    }
}

/// Cross-entropy against class ids, or against mixed targets
/// (`-sum(t * log_softmax(logits))`, the mean over the rows).
fn task_loss<B: Backend>(
    ce: &CrossEntropyLoss<B>,
    logits: Tensor<B, 2>,
    target: Target<B>,
) -> Tensor<B, 1> {
    match target {
        Target::Hard(y) => ce.forward(logits, y),
        Target::Soft(t) => (burn::tensor::activation::log_softmax(logits, 1) * t)
            .sum_dim(1)
            .mean()
            .neg(),
    }
}

/// A batch's inputs and targets (one a task).
type Batch<B> = (Inputs<B>, Vec<Target<B>>);

/// Mix `n` rows of `[3][h][w]` pixels in place as timm's `Mixup` does: row
/// i with row `n - 1 - i`, from the pixels before mixing. Returns each
/// row's weight of its own label.
fn mix_batch(
    m: &TrainMix,
    rng: &mut ChaCha8Rng,
    px: &mut [f32],
    n: usize,
    [h, w]: [usize; 2],
) -> Vec<f64> {
    use crate::stages::image::mix::{Mixing, draw_mixing};
    let params = m.params();
    let draw = |rng: &mut ChaCha8Rng| match rng.random::<f64>() < m.prob {
        true => draw_mixing(&params, (w as u32, h as u32), rng),
        false => Mixing::None,
    };
    let mixings: Vec<Mixing> = match m.mode {
        MixMode::Batch => vec![draw(rng); n],
        MixMode::Elem => (0..n).map(|_| draw(rng)).collect(),
    };
    let original = px.to_vec();
    let len = 3 * h * w;
    for (i, mixing) in mixings.iter().enumerate() {
        let (own, other) = (i * len, (n - 1 - i) * len);
        let out = &mut px[own..own + len];
        let other = &original[other..other + len];
        match mixing {
            Mixing::None => {}
            Mixing::MixUp { lam } => {
                let (l, r) = (*lam as f32, (1.0 - lam) as f32);
                for (o, b) in out.iter_mut().zip(other) {
                    *o = *o * l + b * r;
                }
            }
            Mixing::CutMix { bbox, .. } => {
                let [y0, y1, x0, x1] = bbox.map(|v| v as usize);
                for c in 0..3 {
                    for y in y0..y1 {
                        let s = c * h * w + y * w;
                        out[s + x0..s + x1].copy_from_slice(&other[s + x0..s + x1]);
                    }
                }
            }
        }
    }
    mixings.iter().map(Mixing::lam).collect()
}

/// The generator of a batch's mixing: a function of the seed and the
/// loader's position before the batch, so a resumed run draws the same.
fn mix_rng(seed: u64, at: Position) -> ChaCha8Rng {
    let mut key = Vec::with_capacity(28);
    key.extend_from_slice(b"mix:");
    key.extend_from_slice(&seed.to_le_bytes());
    key.extend_from_slice(&at.epoch.to_le_bytes());
    key.extend_from_slice(&at.rows.to_le_bytes());
    let d = ring::digest::digest(&ring::digest::SHA256, &key);
    ChaCha8Rng::from_seed(d.as_ref().try_into().expect("32 bytes"))
}

/// A batch's tensors and labels; rows with a non-finite feature are left
/// out and counted.
fn tensors<B: Backend>(
    batch: &RecordBatch,
    cols: &Columns,
    d: &Dims,
    device: &B::Device,
    skipped: &mut u64,
    mix: Option<(&TrainMix, &mut ChaCha8Rng)>,
) -> Result<Option<Batch<B>>> {
    let n = batch.num_rows();
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Execution(format!("train: no `{name}` in a batch")))
    };
    let features = match cols.image {
        true => Some(col("image_features")?.as_fixed_size_list().clone()),
        false => None,
    };
    let mel = match cols.audio {
        true => Some(col("mel")?.as_list::<i32>().clone()),
        false => None,
    };
    let pixel_values = match cols.pixels {
        true => Some(col("pixel_values")?.as_fixed_size_list().clone()),
        false => None,
    };
    // A row's `[3][h][w]` floats.
    let pixels_of = |r: usize| {
        pixel_values.as_ref().map(|p| {
            p.value(r)
                .as_fixed_size_list()
                .values()
                .as_fixed_size_list()
                .values()
                .as_primitive::<arrow::datatypes::Float32Type>()
                .clone()
        })
    };
    // Each task's class ids, -1 where the label is missing.
    let mut ys: Vec<Vec<i64>> = Vec::new();
    for spec in &cols.labels {
        let label = col(&spec.column)?;
        ys.push(match &spec.names {
            Some(names) => {
                let l = label.as_string::<i32>();
                (0..n)
                    .map(|r| match l.is_null(r) {
                        true => -1,
                        false => names.get(l.value(r)).copied().unwrap_or(-1),
                    })
                    .collect()
            }
            None => {
                let l = label.as_primitive::<Int64Type>();
                (0..n)
                    .map(|r| if l.is_null(r) { -1 } else { l.value(r) })
                    .collect()
            }
        });
    }
    let y_all: Vec<i64> = (0..n)
        .map(|r| ys.iter().map(|y| y[r]).min().unwrap_or(-1))
        .collect();
    // Rows with a label whose numbers are all finite.
    let mut rows = Vec::with_capacity(n);
    for (r, &label) in y_all.iter().enumerate() {
        let finite_image = features.as_ref().is_none_or(|f| {
            let v = f.value(r);
            v.as_primitive::<arrow::datatypes::Float32Type>()
                .values()
                .iter()
                .all(|x| x.is_finite())
        });
        let finite_audio = mel.as_ref().is_none_or(|m| {
            let bands = m.value(r);
            let bands = bands.as_list::<i32>();
            bands
                .values()
                .as_primitive::<arrow::datatypes::Float32Type>()
                .values()
                .iter()
                .all(|x| x.is_finite())
        });
        let finite_pixels = pixels_of(r).is_none_or(|v| v.values().iter().all(|x| x.is_finite()));
        if finite_image && finite_audio && finite_pixels && label >= 0 {
            rows.push(r);
        } else {
            *skipped += 1;
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let b = rows.len();
    let mut pixels = cols.pixels.then(|| {
        let mut data = Vec::with_capacity(b * 3 * d.pixels[0] * d.pixels[1]);
        for &r in &rows {
            data.extend_from_slice(pixels_of(r).expect("pixel_values").values());
        }
        data
    });
    // Online mixing: each row's weight of its own label, and the smoothing.
    let mixed = match (mix, pixels.as_mut()) {
        (Some((m, rng)), Some(px)) => Some((mix_batch(m, rng, px, b, d.pixels), m.label_smoothing)),
        _ => None,
    };
    let mut targets = Vec::new();
    for (task, y) in ys.iter().enumerate() {
        let classes = if task == 0 { d.classes } else { d.classes2 };
        let y: Vec<i64> = rows.iter().map(|&r| y[r]).collect();
        if let Some(bad) = y.iter().find(|&&l| l < 0 || l as usize >= classes) {
            return Err(Error::Config(format!(
                "`{}`: label {bad} is not one of the model's {classes} classes",
                cols.labels[task].column
            )));
        }
        targets.push(match &mixed {
            None => Target::Hard(Tensor::from_data(TensorData::new(y, [b]), device)),
            Some((lams, smoothing)) => {
                let mut t = Vec::with_capacity(b * classes);
                for (i, &lam) in lams.iter().enumerate() {
                    t.extend(crate::stages::image::mix::mixed_target(
                        y[i] as usize,
                        y[b - 1 - i] as usize,
                        lam,
                        classes,
                        *smoothing,
                    ));
                }
                Target::Soft(Tensor::from_data(TensorData::new(t, [b, classes]), device))
            }
        });
    }
    let text = match cols.text {
        false => None,
        true => {
            let ids = col("input_ids")?.as_list::<i32>();
            let t = d.max_tokens;
            let mut data = vec![0i64; b * t];
            let mut pad = vec![true; b * t];
            for (i, &r) in rows.iter().enumerate() {
                let v = ids.value(r);
                let v = v.as_primitive::<UInt32Type>();
                for (j, &id) in v.values().iter().take(t).enumerate() {
                    if id as usize >= d.vocab {
                        return Err(Error::Config(format!(
                            "token id {id} is not below the model's vocabulary of {}",
                            d.vocab
                        )));
                    }
                    data[i * t + j] = id as i64;
                    pad[i * t + j] = false;
                }
                // An empty text keeps one position so the mean is defined.
                pad[i * t] = false;
            }
            Some((
                Tensor::<B, 2, Int>::from_data(TensorData::new(data, [b, t]), device),
                Tensor::<B, 2, Bool>::from_data(TensorData::new(pad, [b, t]), device),
            ))
        }
    };
    let image = features.map(|f| {
        let dim = f.value_length() as usize;
        let values = f.values().as_primitive::<arrow::datatypes::Float32Type>();
        let mut data = Vec::with_capacity(b * dim);
        for &r in &rows {
            data.extend_from_slice(&values.values()[r * dim..(r + 1) * dim]);
        }
        Tensor::<B, 2>::from_data(TensorData::new(data, [b, dim]), device)
    });
    let audio = match mel {
        None => None,
        Some(m) => {
            let frames = m.value(rows[0]).as_list::<i32>().value(0).len();
            let mut data = Vec::with_capacity(b * frames * d.mels);
            for &r in &rows {
                let bands = m.value(r);
                let bands = bands.as_list::<i32>();
                if bands.len() != d.mels || bands.value(0).len() != frames {
                    return Err(Error::Config(
                        "spectrograms of different shapes: set `duration` in decode_audio so that every clip has the same frames".into(),
                    ));
                }
                // [mels][frames] -> [frames][mels]
                let v = bands
                    .values()
                    .as_primitive::<arrow::datatypes::Float32Type>();
                for f in 0..frames {
                    for m in 0..d.mels {
                        data.push(v.value(m * frames + f));
                    }
                }
            }
            Some(Tensor::<B, 3>::from_data(
                TensorData::new(data, [b, frames, d.mels]),
                device,
            ))
        }
    };
    let pixels = pixels.map(|data| {
        let [h, w] = d.pixels;
        Tensor::<B, 4>::from_data(TensorData::new(data, [b, 3, h, w]), device)
    });
    Ok(Some((
        Inputs {
            text,
            image,
            pixels,
            audio,
        },
        targets,
    )))
}

fn write_line(out: &mut std::fs::File, v: serde_json::Value) -> Result<()> {
    writeln!(out, "{v}").map_err(|e| Error::io("write metrics.jsonl", e))
}

/// The `step-N` checkpoints under `dir/checkpoints`, oldest first (not a
/// `.step-N.tmp`, which a kill left half-written).
fn checkpoint_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    steps.sort();
    Ok(steps)
}

/// The newest complete checkpoint under `dir/checkpoints`.
fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    checkpoint_dirs(dir)
        .ok()?
        .into_iter()
        .rfind(|p| p.join("state.json").exists())
}

/// Where training runs, as chosen before any data is read.
enum Chosen {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

/// Why the first CUDA GPU cannot train, or nothing when it can: the
/// driver, NVRTC (burn compiles its kernels at run time), a device, and a
/// small computation on it.
#[cfg(feature = "cuda")]
fn cuda_unavailable() -> Option<String> {
    use cudarc::driver::result;
    // SAFETY: these only try to open the shared libraries by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no NVIDIA driver (libcuda) was found".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Some(
            "NVRTC (libnvrtc), which compiles the GPU kernels at run time, was not found".into(),
        );
    }
    if let Err(e) = result::init() {
        return Some(format!("the CUDA driver did not start: {e}"));
    }
    match result::device::get_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return Some("the CUDA driver sees no GPU".into()),
        Err(e) => return Some(format!("the CUDA driver cannot count GPUs: {e}")),
    }
    type Gpu = burn::backend::Cuda;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = burn::backend::cuda::CudaDevice::new(0);
        let t = Tensor::<Gpu, 1>::from_floats([1.0, 2.0, 3.0], &device);
        t.sum().into_scalar()
    });
    std::panic::set_hook(hook);
    match probe {
        Ok(6.0) => None,
        Ok(v) => Some(format!("a test sum on the GPU gave {v}, not 6")),
        Err(p) => Some(format!(
            "a test computation on the GPU failed: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("panic")
        )),
    }
}

/// The device `want` resolves to, and what `auto` fell back from.
fn choose(want: TrainDevice) -> Result<(Chosen, Option<String>)> {
    #[cfg(feature = "cuda")]
    let gpu = match want {
        TrainDevice::Cpu => Some("device = \"cpu\"".to_string()),
        _ => cuda_unavailable(),
    };
    #[cfg(not(feature = "cuda"))]
    let gpu = Some("this kiln was built without the `cuda` feature".to_string());
    match (want, gpu) {
        (TrainDevice::Cpu, _) => Ok((Chosen::Cpu, None)),
        (TrainDevice::Cuda, Some(why)) => Err(Error::Config(format!(
            "device = \"cuda\": no GPU to train on: {why} (device = \"auto\" falls back to the CPU)"
        ))),
        (TrainDevice::Auto, Some(why)) => Ok((Chosen::Cpu, Some(why))),
        #[cfg(feature = "cuda")]
        (_, None) => Ok((Chosen::Cuda, None)),
        #[cfg(not(feature = "cuda"))]
        (_, None) => unreachable!("no GPU without the cuda feature"),
    }
}

/// What is refused before any data is read.
fn check(file: &TrainFile) -> Result<()> {
    let o = &file.optim;
    if o.batch_size == 0 || o.grad_accum == 0 {
        return Err(Error::Config(
            "optim.batch_size and optim.grad_accum must be at least 1".into(),
        ));
    }
    if file.model.heads == 0 || !file.model.d_model.is_multiple_of(file.model.heads) {
        return Err(Error::Config(format!(
            "model.d_model = {} is not a multiple of model.heads = {}",
            file.model.d_model, file.model.heads
        )));
    }
    if let Some(m) = &file.mix {
        crate::stages::image::mix::check_params(&m.params())
            .map_err(|(key, why)| Error::Config(format!("mix.{key}: {why}")))?;
    }
    Ok(())
}

/// Train as `file` says; `resume` continues from the newest checkpoint in
/// that output directory.
pub fn train(file: &TrainFile, resume: Option<&Path>, quiet: bool) -> Result<Summary> {
    check(file)?;
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

/// The cast of every float parameter to a type: the compute copy of the
/// master weights, whose gradients flow back to them through the casts.
struct CastParams(FloatDType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

/// Initialises lazily made parameters, so that copies share their values.
struct Materialise;

impl<B: Backend> ModuleMapper<B> for Materialise {}

/// `t` cast to fp32 when `cast` (it was computed in another type).
fn in_f32<B: Backend, const D: usize>(t: Tensor<B, D>, cast: bool) -> Tensor<B, D> {
    match cast {
        true => t.cast(FloatDType::F32),
        false => t,
    }
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
    let ds = Arc::new(Dataset::open(Path::new(&file.data.path))?);
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
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let mut step = 0u64;
    if let Some(dir) = resume {
        let ckpt = latest_checkpoint(dir).ok_or_else(|| {
            Error::Config(format!(
                "{} holds no checkpoint to resume from",
                dir.display()
            ))
        })?;
        let state: State =
            serde_json::from_slice(&std::fs::read(ckpt.join("state.json")).at("read", &ckpt)?)?;
        if state.dims != d {
            return Err(Error::Config(format!(
                "the checkpoint {} is of another model ({:?}); this file and dataset make {:?}",
                ckpt.display(),
                state.dims,
                d
            )));
        }
        // The model's record keeps its parameter ids, which the optimiser's
        // state is keyed by (model.safetensors is the weights for others).
        let record = recorder.load(ckpt.join("model"), &device).map_err(|e| {
            Error::Config(format!(
                "{}: the weights do not fit the model: {e}",
                ckpt.display()
            ))
        })?;
        model = model.load_record(record);
        let record = recorder
            .load(ckpt.join("optimizer"), &device)
            .map_err(|e| Error::Config(format!("{}: optimizer state: {e}", ckpt.display())))?;
        optim = optim.load_record(record);
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
                checkpoint(
                    &out,
                    &model,
                    &optim,
                    &recorder,
                    step,
                    loader.position(),
                    &d,
                    file,
                )?;
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

#[allow(clippy::too_many_arguments)]
fn checkpoint<B: AutodiffBackend, O: Optimizer<Fusion<B>, B>>(
    out: &Path,
    model: &Fusion<B>,
    optim: &O,
    recorder: &NamedMpkFileRecorder<FullPrecisionSettings>,
    step: u64,
    position: Position,
    d: &Dims,
    file: &TrainFile,
) -> Result<()> {
    let dir = out.join("checkpoints").join(format!("step-{step:08}"));
    let tmp = out.join("checkpoints").join(format!(".step-{step:08}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at("remove", &tmp)?;
    }
    std::fs::create_dir_all(&tmp).at("create", &tmp)?;
    let mut store = SafetensorsStore::from_file(tmp.join("model.safetensors"));
    model
        .save_into(&mut store)
        .map_err(|e| Error::Execution(format!("cannot save the model: {e}")))?;
    canonical_safetensors(&tmp.join("model.safetensors"))?;
    recorder
        .record(model.clone().into_record(), tmp.join("model"))
        .map_err(|e| Error::Execution(format!("cannot save the model: {e}")))?;
    recorder
        .record(optim.to_record(), tmp.join("optimizer"))
        .map_err(|e| Error::Execution(format!("cannot save the optimizer: {e}")))?;
    let state = State {
        step,
        position,
        dims: *d,
        seed: file.seed,
    };
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(&state)?).at("write", &tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).at("remove", &dir)?;
    }
    std::fs::rename(&tmp, &dir).at("rename", &tmp)?;
    // Keep the newest `keep`.
    let mut all = checkpoint_dirs(out).at("list", out.join("checkpoints"))?;
    while all.len() > file.checkpoint.keep.max(1) {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).at("remove", &old)?;
    }
    Ok(())
}

/// Rewrites a safetensors file's JSON header with its keys sorted (burn
/// writes `__metadata__` in hash order), padded to 8 bytes: the same
/// weights give the same bytes.
fn canonical_safetensors(path: &Path) -> Result<()> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut e: Vec<_> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                e.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(e.into_iter().collect())
            }
            other => other,
        }
    }
    let bytes = std::fs::read(path).at("read", path)?;
    let bad = || Error::Execution(format!("{}: not a safetensors file", path.display()));
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(bad)?;
    let header = bytes.get(8..8 + n).ok_or_else(bad)?;
    let mut text = serde_json::to_vec(&sorted(serde_json::from_slice(header)?))?;
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).at("write", path)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::image::mix::mixed_target;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::module::ParamId;
    use burn::tensor::DType;

    type B = Autodiff<NdArray<f32>>;

    fn mix(mode: MixMode, mixup: f64, cutmix: f64) -> TrainMix {
        TrainMix {
            mode,
            mixup_alpha: mixup,
            cutmix_alpha: cutmix,
            cutmix_minmax: None,
            prob: 1.0,
            switch_prob: 0.5,
            correct_lam: true,
            label_smoothing: 0.1,
        }
    }

    /// `n` rows of `[3][h][w]`, each value its own.
    fn pixels(n: usize, h: usize, w: usize) -> Vec<f32> {
        (0..n * 3 * h * w).map(|v| v as f32).collect()
    }

    #[test]
    fn batch_mixup_blends_each_row_with_the_flipped_batch() {
        let (n, h, w) = (5, 4, 6);
        let mut px = pixels(n, h, w);
        let before = px.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let lams = mix_batch(&mix(MixMode::Batch, 1.0, 0.0), &mut rng, &mut px, n, [h, w]);
        let lam = lams[0];
        assert!(lams.iter().all(|&l| l == lam) && lam > 0.0 && lam < 1.0);
        let len = 3 * h * w;
        for i in 0..n {
            let j = n - 1 - i;
            for k in 0..len {
                let want =
                    before[i * len + k] * lam as f32 + before[j * len + k] * (1.0 - lam) as f32;
                assert_eq!(px[i * len + k], want);
            }
        }
        // The same generator state mixes the same way.
        let mut again = before.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        mix_batch(
            &mix(MixMode::Batch, 1.0, 0.0),
            &mut rng,
            &mut again,
            n,
            [h, w],
        );
        assert_eq!(again, px);
    }

    #[test]
    fn cutmix_pastes_the_partners_box_and_corrects_lambda() {
        let (n, h, w) = (4, 8, 10);
        let len = 3 * h * w;
        for seed in 0..20 {
            let mut px = pixels(n, h, w);
            let before = px.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let lams = mix_batch(&mix(MixMode::Elem, 0.0, 1.0), &mut rng, &mut px, n, [h, w]);
            for (i, &lam) in lams.iter().enumerate() {
                let j = n - 1 - i;
                // Pixels from the partner: the box, in every channel.
                let mut pasted = 0;
                for k in 0..len {
                    let (own, other) = (before[i * len + k], before[j * len + k]);
                    let v = px[i * len + k];
                    assert!(v == own || v == other);
                    if v == other {
                        pasted += 1;
                    }
                }
                assert_eq!(pasted % 3, 0);
                let area = (pasted / 3) as f64;
                assert!(
                    (lam - (1.0 - area / (h * w) as f64)).abs() < 1e-12,
                    "{lam} {area}"
                );
            }
        }
    }

    #[test]
    fn elem_mode_draws_each_row_and_prob_zero_leaves_the_batch_alone() {
        let (n, h, w) = (6, 4, 4);
        let mut px = pixels(n, h, w);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let lams = mix_batch(&mix(MixMode::Elem, 1.0, 0.0), &mut rng, &mut px, n, [h, w]);
        assert!(lams.windows(2).any(|l| l[0] != l[1]), "{lams:?}");
        let mut m = mix(MixMode::Batch, 1.0, 1.0);
        m.prob = 0.0;
        let mut px = pixels(n, h, w);
        let lams = mix_batch(&m, &mut rng, &mut px, n, [h, w]);
        assert_eq!(px, pixels(n, h, w));
        assert!(lams.iter().all(|&l| l == 1.0));
        // Unmixed, the target is the smoothed one-hot of the row's label.
        let t = mixed_target(2, 0, 1.0, 4, 0.1);
        assert_eq!(t, vec![0.025, 0.025, 0.925, 0.025]);
    }

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

    #[test]
    fn the_device_is_chosen_before_any_data_is_read() {
        let (chosen, why) = choose(TrainDevice::Cpu).unwrap();
        assert!(matches!(chosen, Chosen::Cpu) && why.is_none());
        // Without a GPU, `auto` says why it fell back and `cuda` refuses.
        if let Ok((Chosen::Cpu, Some(why))) = choose(TrainDevice::Auto) {
            let e = choose(TrainDevice::Cuda).err().unwrap().to_string();
            assert!(e.contains("no GPU to train on") && e.contains(&why), "{e}");
        }
    }
}
