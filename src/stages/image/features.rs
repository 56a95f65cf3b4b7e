//! `image_features`: an ONNX image model run by ONNX Runtime.
//!
//! The default model is EfficientNet-Lite0 with ImageNet weights
//! (`models/efficientnet_lite0.onnx`, built by `scripts/setup.sh`); any ONNX
//! model with one NCHW float image input works by path. Pixels become
//! `(pixel - mean) / std` per channel, in batches of `batch_size` images.
//! The chosen output is stored as `image_features` (a fixed-size list of
//! float32), optionally with `logits` and the `top_k` classes.
//!
//! ONNX Runtime is loaded at run time ([`crate::onnx`]). With
//! `device = "auto"` the CUDA execution provider is used when it really
//! loads and CPU otherwise; `device = "cuda"` fails with the reason when it
//! does not. Which provider ran is reported in the run summary.
//!
//! The model runs behind an inference queue on threads of its own
//! ([`super::serve`]): on the CPU one single-threaded session a thread, so a
//! lone task still uses every core; on CUDA one session fed batches gathered
//! from every task. Sessions are created with deterministic compute; an
//! image's features do not depend on the batch it is run in nor on the
//! thread count (tested).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{ArrayRef, FixedSizeListArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, SchemaRef};
use ort::session::Session;
use ort::value::{TensorRef, ValueType};

use super::serve::{Job, Queue};
use super::{Pixels, f32_list, fixed_list_field, require_fixed_size, schema_with};
use crate::error::{Error, Result};
use crate::onnx::{environment, resolve_model};
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// CUDA when its provider really loads, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Features from an ONNX image model (EfficientNet-Lite0 by default).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFeaturesConfig {
    /// `efficientnet-lite0`, or the path of an `.onnx` file.
    #[serde(default = "default_model")]
    pub model: String,
    /// The model's image input; by default its first input.
    #[serde(default)]
    pub input_name: Option<String>,
    /// The output stored as `image_features`; by default `features`, else
    /// the model's first output.
    #[serde(default)]
    pub features_output: Option<String>,
    /// Per-channel mean and std in pixel units (0-255): the model sees
    /// `(pixel - mean) / std`. Default: EfficientNet-Lite0's 127 and 128.
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    /// Also store the output named here as `logits`.
    #[serde(default)]
    pub logits_output: Option<String>,
    /// Also store the `top_k` classes of `logits_output` and their
    /// softmax probabilities.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Images per inference call. By default 32 on CUDA and 1 on CPU,
    /// where bigger batches were no faster and took far more memory.
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub device: Device,
    /// `fp32`, or `int8`: the built-in EfficientNet-Lite0 quantised
    /// (`models/efficientnet_lite0_int8.onnx`, see `scripts/make_models.py`),
    /// about twice as fast on a CPU with int8 dot products, features within
    /// a cosine of about 0.99 of fp32's.
    #[serde(default)]
    pub precision: Precision,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Int8,
}

fn default_model() -> String {
    "efficientnet-lite0".into()
}

/// EfficientNet-Lite0's preprocessing: `(p - 127) / 128`.
const LITE0_MEAN: [f32; 3] = [127.0; 3];
const LITE0_STD: [f32; 3] = [128.0; 3];

pub struct ImageFeatures {
    model: PathBuf,
    input_name: String,
    features_output: String,
    logits_output: Option<String>,
    top_k: Option<usize>,
    mean: [f32; 3],
    std: [f32; 3],
    size: (u32, u32),
    pub(super) batch_size: usize,
    pub(super) features_dim: usize,
    pub(super) logits_dim: usize,
    /// The execution provider the sessions run on.
    pub provider: String,
    sessions: Mutex<Vec<Session>>,
}

impl ImageFeatures {
    /// Open the model and check it against the config and the image size;
    /// every failure is a message for the config error.
    pub fn build(
        cfg: &ImageFeaturesConfig,
        input: &SchemaRef,
    ) -> std::result::Result<ImageFeatures, (String, String)> {
        let key = |k: &str, m: String| (k.to_string(), m);
        let size =
            require_fixed_size(input, "image_features").map_err(|e| key("type", e.to_string()))?;
        let model = match cfg.precision {
            Precision::Fp32 => resolve_model(&cfg.model),
            Precision::Int8 if cfg.model == "efficientnet-lite0" => {
                resolve_model("efficientnet-lite0-int8")
            }
            Precision::Int8 => {
                return Err(key(
                    "precision",
                    "precision = \"int8\" selects the built-in int8 EfficientNet-Lite0; for another model, give its quantised .onnx file as `model`".into(),
                ));
            }
        }
        .map_err(|m| key("model", m))?;
        if cfg.batch_size == Some(0) {
            return Err(key("batch_size", "batch_size must be at least 1".into()));
        }
        if cfg.top_k == Some(0) {
            return Err(key("top_k", "top_k must be at least 1".into()));
        }
        let default_norm = cfg.model == "efficientnet-lite0";
        let (mean, std) = match (cfg.mean, cfg.std) {
            (Some(m), Some(s)) => (m, s),
            (None, None) if default_norm => (LITE0_MEAN, LITE0_STD),
            (None, None) => {
                return Err(key(
                    "mean",
                    "set `mean` and `std` (per channel, in pixel units 0-255) for this model"
                        .into(),
                ));
            }
            _ => return Err(key("std", "set both `mean` and `std`".into())),
        };
        if std.contains(&0.0) {
            return Err(key("std", "std must not be 0".into()));
        }
        let mut stage = ImageFeatures {
            model,
            input_name: String::new(),
            features_output: String::new(),
            logits_output: None,
            top_k: cfg.top_k,
            mean,
            std,
            size,
            batch_size: 1,
            features_dim: 0,
            logits_dim: 0,
            provider: String::new(),
            sessions: Mutex::new(Vec::new()),
        };
        let (mut session, provider) = stage.open(cfg.device).map_err(|m| key("device", m))?;
        stage.batch_size =
            cfg.batch_size
                .unwrap_or(if provider.starts_with("CUDA") { 64 } else { 1 });
        stage.provider = provider;
        let first_input = session.inputs().first().map(|i| i.name().to_string());
        stage.input_name = match (&cfg.input_name, first_input) {
            (Some(n), _) if session.inputs().iter().any(|i| i.name() == n) => n.clone(),
            (Some(n), _) => return Err(key("input_name", format!("the model has no input `{n}`"))),
            (None, Some(n)) => n,
            (None, None) => return Err(key("model", "the model has no inputs".into())),
        };
        let input_info = session
            .inputs()
            .iter()
            .find(|i| i.name() == stage.input_name)
            .expect("checked above");
        if let ValueType::Tensor { shape, .. } = input_info.dtype() {
            let dims: Vec<i64> = shape.iter().copied().collect();
            let want = [-1, 3, size.1 as i64, size.0 as i64];
            let fits = dims.len() == 4
                && dims
                    .iter()
                    .zip(want)
                    .enumerate()
                    .all(|(i, (&d, w))| d < 0 || i == 0 || d == w);
            if !fits {
                return Err(key(
                    "type",
                    format!(
                        "the model's input `{}` has shape {dims:?}; the images reaching it are 3 x {} x {} (set the resize_image crop to the model's size)",
                        stage.input_name, size.1, size.0
                    ),
                ));
            }
        }
        let has_output = |n: &str| session.outputs().iter().any(|o| o.name() == n);
        stage.features_output = match &cfg.features_output {
            Some(n) if has_output(n) => n.clone(),
            Some(n) => {
                return Err(key(
                    "features_output",
                    format!("the model has no output `{n}`"),
                ));
            }
            None if has_output("features") => "features".into(),
            None => session.outputs()[0].name().to_string(),
        };
        stage.logits_output = match (&cfg.logits_output, cfg.top_k) {
            (Some(n), _) if has_output(n) => Some(n.clone()),
            (Some(n), _) => {
                return Err(key(
                    "logits_output",
                    format!("the model has no output `{n}`"),
                ));
            }
            (None, Some(_)) if has_output("logits") => Some("logits".into()),
            (None, Some(_)) => {
                return Err(key(
                    "top_k",
                    "top_k needs `logits_output`, the model's class scores".into(),
                ));
            }
            (None, None) => None,
        };
        // One run on a blank image gives the output sizes.
        let blank = vec![0u8; (size.0 * size.1 * 3) as usize];
        let (features, logits) = stage
            .infer_data(&mut session, &stage.normalize(&[&blank]), 1)
            .map_err(|m| key("model", format!("the model does not run: {m}")))?;
        stage.features_dim = features.len();
        stage.logits_dim = logits.map_or(0, |l| l.len());
        if let Some(k) = stage.top_k
            && k > stage.logits_dim
        {
            return Err(key(
                "top_k",
                format!(
                    "top_k = {k}, but the model has {} classes",
                    stage.logits_dim
                ),
            ));
        }
        stage.sessions.lock().expect("not poisoned").push(session);
        Ok(stage)
    }

    /// A new session on `device`, and the provider it runs on.
    fn open(&self, device: Device) -> std::result::Result<(Session, String), String> {
        let env = environment()?;
        let builder = || -> std::result::Result<_, String> {
            Session::builder(env)
                .and_then(|b| Ok(b.with_intra_threads(1)?))
                .and_then(|b| Ok(b.with_deterministic_compute(true)?))
                .map_err(|e| e.to_string())
        };
        let cpu = || -> std::result::Result<(Session, String), String> {
            let s = builder()?
                .commit_from_file(&self.model)
                .map_err(|e| format!("cannot load {}: {e}", self.model.display()))?;
            Ok((s, "CPUExecutionProvider".into()))
        };
        match device {
            Device::Cpu => cpu(),
            Device::Cuda | Device::Auto => match self.open_cuda(builder()?) {
                Ok(s) => Ok((s, "CUDAExecutionProvider".into())),
                Err(why) if device == Device::Auto => {
                    tracing::info!("CUDA is not available ({why}); running the model on CPU");
                    cpu()
                }
                Err(why) => Err(format!("device = \"cuda\", but {why}")),
            },
        }
    }

    #[cfg(feature = "cuda")]
    fn open_cuda(
        &self,
        builder: ort::session::builder::SessionBuilder,
    ) -> std::result::Result<Session, String> {
        let ep = ort::ep::CUDA::default().build().error_on_failure();
        builder
            .with_execution_providers([ep])
            .map_err(|e| format!("the CUDA execution provider did not load: {e}"))?
            .commit_from_file(&self.model)
            .map_err(|e| format!("the model does not load on CUDA: {e}"))
    }

    #[cfg(not(feature = "cuda"))]
    fn open_cuda(
        &self,
        _builder: ort::session::builder::SessionBuilder,
    ) -> std::result::Result<Session, String> {
        Err("this kiln was built without the `cuda` feature".into())
    }

    /// `images` (each `size`, RGB8) as the model's input: `(p - mean) /
    /// std`, N x 3 x H x W.
    fn normalize(&self, images: &[&[u8]]) -> Vec<f32> {
        let plane = self.size.0 as usize * self.size.1 as usize;
        let mut data = vec![0f32; images.len() * 3 * plane];
        for (i, rgb) in images.iter().enumerate() {
            let base = i * 3 * plane;
            for (p, px) in rgb.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    data[base + c * plane + p] = (px[c] as f32 - self.mean[c]) / self.std[c];
                }
            }
        }
        data
    }

    /// Run the model on `n` normalised images (read in place, not copied);
    /// their features and logits, concatenated.
    pub(super) fn infer_data(&self, session: &mut Session, data: &[f32], n: usize) -> Inferred {
        let (w, h) = (self.size.0 as usize, self.size.1 as usize);
        let tensor = TensorRef::from_array_view((vec![n as i64, 3, h as i64, w as i64], data))
            .map_err(|e| e.to_string())?;
        let outputs = session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| e.to_string())?;
        let take = |name: &str| -> std::result::Result<Vec<f32>, String> {
            let value = outputs
                .get(name)
                .ok_or_else(|| format!("no output `{name}`"))?;
            let (_, values) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("output `{name}`: {e}"))?;
            Ok(values.to_vec())
        };
        let features = take(&self.features_output)?;
        let logits = match &self.logits_output {
            Some(n) => Some(take(n)?),
            None => None,
        };
        Ok((features, logits))
    }

    pub(super) fn session(&self) -> Result<Session> {
        if let Some(s) = self.sessions.lock().expect("not poisoned").pop() {
            return Ok(s);
        }
        // Every session runs where the first one did, so that no image's
        // features depend on which session it met.
        let device = match self.provider.starts_with("CUDA") {
            true => Device::Cuda,
            false => Device::Cpu,
        };
        self.open(device)
            .map(|(s, _)| s)
            .map_err(|m| Error::Execution(format!("image_features: {m}")))
    }
}

/// The features and logits of some images, or why the model failed on them.
pub(super) type Inferred = std::result::Result<(Vec<f32>, Option<Vec<f32>>), String>;

/// The stage: the model, served by its inference queue ([`Queue`]), started
/// on the first batch.
pub struct FeaturesStage {
    model: Arc<ImageFeatures>,
    queue: OnceLock<Queue>,
}

impl FeaturesStage {
    fn queue(&self) -> &Queue {
        self.queue.get_or_init(|| {
            let servers = match self.model.provider.starts_with("CUDA") {
                true => 1,
                false => rayon::current_num_threads(),
            };
            Queue::start(self.model.clone(), servers)
        })
    }
}

impl Stage for FeaturesStage {
    fn name(&self) -> &str {
        "image_features"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        require_fixed_size(input, "image_features")?;
        let mut add = vec![fixed_list_field(
            "image_features",
            DataType::Float32,
            self.model.features_dim,
        )];
        if self.model.logits_output.is_some() {
            add.push(fixed_list_field(
                "logits",
                DataType::Float32,
                self.model.logits_dim,
            ));
        }
        if let Some(k) = self.model.top_k {
            add.push(fixed_list_field("top_classes", DataType::Int64, k));
            add.push(fixed_list_field("top_scores", DataType::Float32, k));
        }
        Ok(schema_with(input, &[], &add))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let px = Pixels::of(&batch)?;
        let rows = batch.num_rows();
        let plane = (self.model.size.0 * self.model.size.1 * 3) as usize;
        if let Some(bad) = (0..rows).find(|&r| px.get(r).0.len() != plane) {
            return Err(Error::Execution(format!(
                "image_features: row {bad} has {} bytes of pixels, expected {plane}",
                px.get(bad).0.len()
            )));
        }
        // Jobs of `batch_size` images go to the inference queue; the
        // results come back in order.
        let m = &*self.model;
        let mut replies = Vec::new();
        for start in (0..rows).step_by(m.batch_size) {
            let end = (start + m.batch_size).min(rows);
            let images: Vec<&[u8]> = (start..end).map(|r| px.get(r).0).collect();
            let (reply, rx) = std::sync::mpsc::sync_channel(1);
            let job = Job {
                data: m.normalize(&images),
                n: end - start,
                reply,
            };
            if !self.queue().send(job) {
                return Err(Error::Execution(
                    "image_features: the inference threads stopped".into(),
                ));
            }
            replies.push(rx);
        }
        let mut chunks: Vec<Result<Vec<Inferred>>> = Vec::new();
        for rx in replies {
            chunks.push(match rx.recv() {
                Ok(Ok(results)) => Ok(results),
                Ok(Err(m)) => Err(Error::Execution(format!("image_features: {m}"))),
                Err(_) => Err(Error::Execution(
                    "image_features: an inference thread stopped".into(),
                )),
            });
        }
        let mut keep = vec![true; rows];
        let mut features: Vec<f32> = Vec::with_capacity(rows * self.model.features_dim);
        let mut logits: Vec<f32> = Vec::new();
        for (c, chunk) in chunks.into_iter().enumerate() {
            // A chunk is one result for all its images, or one an image.
            for (i, r) in chunk?.into_iter().enumerate() {
                match r {
                    Ok((f, l)) => {
                        features.extend(f);
                        logits.extend(l.unwrap_or_default());
                    }
                    Err(m) => {
                        let row = c * self.model.batch_size + i;
                        cx.reject(&batch, row, "inference_failed", m)?;
                        keep[row] = false;
                    }
                }
            }
        }
        let batch = super::keep_rows(batch, &keep)?;
        let kept = batch.num_rows();
        let schema = self.output_schema(&batch.schema())?;
        let mut added: Vec<(&str, ArrayRef)> = vec![(
            "image_features",
            f32_list(features, self.model.features_dim)?,
        )];
        if self.model.logits_output.is_some() {
            if let Some(k) = self.model.top_k {
                let (classes, scores) = top_k(&logits, self.model.logits_dim, k);
                let item = Arc::new(Field::new("item", DataType::Int64, true));
                added.push((
                    "top_classes",
                    Arc::new(FixedSizeListArray::try_new(
                        item,
                        k as i32,
                        Arc::new(Int64Array::from(classes)),
                        None,
                    )?),
                ));
                added.push(("top_scores", f32_list(scores, k)?));
            }
            added.push(("logits", f32_list(logits, self.model.logits_dim)?));
        }
        debug_assert_eq!(kept, added[0].1.len());
        super::batch_with(&batch, &schema, added)
    }

    fn report(&self) -> Option<String> {
        Some(format!(
            "image_features: {} on {}, {} image(s) a call, the model busy {:.0}% of the time",
            self.model.model.display(),
            self.model.provider,
            self.model.batch_size,
            self.queue.get().map_or(0.0, Queue::busy_share) * 100.0
        ))
    }
}

/// The `k` best classes of each row of `logits` (ties to the lower id) and
/// their softmax probabilities.
pub fn top_k(logits: &[f32], classes: usize, k: usize) -> (Vec<i64>, Vec<f32>) {
    let mut ids = Vec::with_capacity(logits.len() / classes.max(1) * k);
    let mut scores = Vec::with_capacity(ids.capacity());
    for row in logits.chunks_exact(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &c in &order[..k] {
            ids.push(c as i64);
            scores.push((((row[c] - max) as f64).exp() / sum) as f32);
        }
    }
    (ids, scores)
}

impl BuildStage for ImageFeaturesConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        Ok(Built::Ready(Arc::new(FeaturesStage {
            model: Arc::new(ImageFeatures::build(self, cx.input)?),
            queue: OnceLock::new(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_best_first_and_ties_by_id() {
        let (ids, scores) = top_k(&[0.0, 2.0, 2.0, 1.0], 4, 3);
        assert_eq!(ids, [1, 2, 3]);
        assert!((scores[0] - scores[1]).abs() < 1e-7);
        assert!(scores[0] > scores[2]);
    }
}
