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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, UInt32Type};
use burn::backend::{Autodiff, NdArray};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
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
    pub output: TrainOutput,
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
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            d_model: default_d_model(),
            heads: default_heads(),
        }
    }
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
    audio: bool,
    /// The label columns: the task's, and the second task's if any.
    labels: Vec<LabelSpec>,
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

type Cpu = NdArray<f32>;
type Train = Autodiff<Cpu>;

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
    let (text, audio) = (has("input_ids").is_some(), has("mel").is_some());
    if !text && image == 0 && !audio {
        return Err(bad(
            "the dataset has none of `input_ids`, `image_features`, `mel` for the model to read"
                .into(),
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
    if file.model.heads == 0 || !file.model.d_model.is_multiple_of(file.model.heads) {
        return Err(Error::Config(format!(
            "model.d_model = {} is not a multiple of model.heads = {}",
            file.model.d_model, file.model.heads
        )));
    }
    Ok((
        Dims {
            vocab,
            max_tokens: file.data.max_tokens.max(1),
            image,
            mels,
            classes: columns.labels[0].classes,
            classes2: columns.labels.get(1).map_or(0, |l| l.classes),
            d_model: file.model.d_model,
            heads: file.model.heads,
        },
        columns,
    ))
}

/// A batch's inputs and class ids (one tensor a task).
type Batch<B> = (Inputs<B>, Vec<Tensor<B, 1, Int>>);

/// A batch's tensors and labels; rows with a non-finite feature are left
/// out and counted.
fn tensors<B: Backend>(
    batch: &RecordBatch,
    cols: &Columns,
    d: &Dims,
    device: &B::Device,
    skipped: &mut u64,
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
        if finite_image && finite_audio && label >= 0 {
            rows.push(r);
        } else {
            *skipped += 1;
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let b = rows.len();
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
        targets.push(Tensor::<B, 1, Int>::from_data(
            TensorData::new(y, [b]),
            device,
        ));
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
    Ok(Some((Inputs { text, image, audio }, targets)))
}

fn write_line(out: &mut std::fs::File, v: serde_json::Value) -> Result<()> {
    writeln!(out, "{v}").map_err(|e| Error::io("write metrics.jsonl", e))
}

/// The newest checkpoint under `dir/checkpoints`.
fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("state.json").exists())
        .collect();
    steps.sort();
    steps.pop()
}

/// Train as `file` says; `resume` continues from the newest checkpoint in
/// that output directory.
pub fn train(file: &TrainFile, resume: Option<&Path>, quiet: bool) -> Result<Summary> {
    if file.output.device == TrainDevice::Cuda {
        return Err(Error::Config(
            "output.device = \"cuda\": this kiln trains on CPU only (it was built without a GPU backend)".into(),
        ));
    }
    let o = &file.optim;
    if o.batch_size == 0 || o.grad_accum == 0 {
        return Err(Error::Config(
            "optim.batch_size and optim.grad_accum must be at least 1".into(),
        ));
    }
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
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
    <Train as Backend>::seed(&device, file.seed);
    let mut model: Fusion<Train> = Fusion::new(&d, &device);
    let mut optim_cfg = AdamWConfig::new().with_weight_decay(o.weight_decay as f32);
    if let Some(c) = o.clip_norm {
        optim_cfg = optim_cfg.with_grad_clipping(Some(GradientClippingConfig::Norm(c as f32)));
    }
    let mut optim = optim_cfg.init::<Train, Fusion<Train>>();
    let mut columns: Vec<String> = ["sample_id", "input_ids", "image_features", "mel"]
        .iter()
        .filter(|c| ds.schema.field_with_name(c).is_ok())
        .map(|c| c.to_string())
        .collect();
    columns.extend(cols.labels.iter().map(|l| l.column.clone()));
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
        let mut micro: Vec<Batch<Train>> = Vec::new();
        let epoch = loader.position().epoch;
        let mut epoch_over = false;
        while micro.len() < o.grad_accum {
            match loader.next_batch()? {
                None => {
                    epoch_over = true;
                    break;
                }
                Some(b) => {
                    let b = split(&b, file.data.validation, false)?;
                    if let Some(t) = tensors::<Train>(&b, &cols, &d, &device, &mut skipped)? {
                        micro.push(t);
                    }
                }
            }
        }
        if !micro.is_empty() {
            let rows: usize = micro.iter().map(|(_, y)| y[0].dims()[0]).sum();
            let mut accumulator = GradientsAccumulator::<Fusion<Train>>::new();
            let mut loss_sum = 0.0;
            let mut weight = None;
            for (x, mut y) in micro {
                let n = y[0].dims()[0];
                let (logits, second) = model.forward(x);
                let first = loss_fn.forward(logits, y.remove(0));
                let loss = match (second, model.task_weight()) {
                    (Some(logits2), Some(w)) => {
                        let other = loss_fn.forward(logits2, y.remove(0));
                        weight = Some(w.clone().into_scalar() as f64);
                        first * w.clone() + other * (w.neg() + 1.0)
                    }
                    _ => first,
                };
                // The mean over the micro-batch, weighted by its share of the step.
                let loss = loss * (n as f64 / rows as f64);
                loss_sum += loss.clone().into_scalar() as f64;
                let g = GradientsParams::from_grads(loss.backward(), &model);
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
                    "samples_per_s": rate,
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
                serde_json::json!({"epoch": epoch, "step": step, "val_accuracy": acc, "val_loss": loss, "val_accuracy_2": e.accuracy2, "skipped": skipped}),
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
        device: "cpu (NdArray)".into(),
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
fn grad_norm(model: &Fusion<Train>, grads: &GradientsParams) -> f64 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        sum: f64,
    }
    impl burn::module::ModuleVisitor<Train> for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<Train, D>>) {
            if let Some(g) = self.grads.get::<Cpu, D>(param.id) {
                self.sum += g.powi_scalar(2).sum().into_scalar() as f64;
            }
        }
    }
    let mut v = Norm { grads, sum: 0.0 };
    model.visit(&mut v);
    v.sum.sqrt()
}

#[allow(clippy::too_many_arguments)]
fn checkpoint<O: Optimizer<Fusion<Train>, Train>>(
    out: &Path,
    model: &Fusion<Train>,
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
    let mut all: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .at("list", out)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    all.sort();
    while all.len() > file.checkpoint.keep.max(1) {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).at("remove", &old)?;
    }
    Ok(())
}

/// What the held-out samples say: accuracy and mean loss of the first
/// task, accuracy of the second.
struct Evaluation {
    accuracy: Option<f64>,
    loss: Option<f64>,
    accuracy2: Option<f64>,
}

/// Accuracy and mean loss on the held-out samples.
fn evaluate(
    model: &Fusion<Cpu>,
    ds: &Arc<Dataset>,
    file: &TrainFile,
    cols: &Columns,
    d: &Dims,
    columns: &[String],
) -> Result<Evaluation> {
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let mut loader = loader(ds, file, columns, 64)?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (mut right, mut right2, mut total, mut loss_sum) = (0u64, 0u64, 0u64, 0.0f64);
    let mut skipped = 0;
    while let Some(b) = loader.next_batch()? {
        let b = split(&b, file.data.validation, true)?;
        let Some((x, mut y)) = tensors::<Cpu>(&b, cols, d, &device, &mut skipped)? else {
            continue;
        };
        let y1 = y.remove(0);
        let n = y1.dims()[0] as u64;
        let (logits, second) = model.forward(x);
        loss_sum += loss_fn.forward(logits.clone(), y1.clone()).into_scalar() as f64 * n as f64;
        let correct = |logits: Tensor<Cpu, 2>, y: Tensor<Cpu, 1, Int>| {
            let predicted = logits.argmax(1).squeeze_dim::<1>(1);
            predicted.equal(y).int().sum().into_scalar() as u64
        };
        right += correct(logits, y1);
        if let Some(l2) = second {
            right2 += correct(l2, y.remove(0));
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
