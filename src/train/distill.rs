//! Distillation (`[distill]`): a trained kiln model (the teacher, for
//! example one with a larger `d_model`) teaches the model being trained.
//!
//! Each task's loss is `alpha * T^2 * KL(softmax(teacher / T) ||
//! softmax(student / T)) + (1 - alpha) * CE`, Hinton et al.'s, with the KL
//! divergence summed over the classes and averaged over the rows
//! (PyTorch's `kl_div(..., reduction="batchmean")`); with mixed targets the
//! CE is against them and the teacher sees the same mixed inputs. The
//! teacher runs in inference only (no gradient), in fp32, on the same
//! device; it must take the same inputs and classes as the student.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::model::{Dims, Fusion};
use crate::error::{Error, IoContext, Result};

/// `[distill]` in the training file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// A `kiln train` output (its newest checkpoint) or one checkpoint
    /// directory.
    pub teacher: String,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

fn default_temperature() -> f64 {
    2.0
}
fn default_alpha() -> f64 {
    0.5
}

impl DistillConfig {
    /// What is refused before any data is read: `(key, why)`.
    pub fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err((
                "distill.temperature",
                format!(
                    "distill.temperature = {} is not a positive number",
                    self.temperature
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err((
                "distill.alpha",
                format!("distill.alpha = {} is not in [0, 1]", self.alpha),
            ));
        }
        checkpoint_dir(Path::new(&self.teacher)).map_err(|e| ("distill.teacher", e))?;
        Ok(())
    }
}

/// The checkpoint directory `path` names: itself, or the newest under
/// `path/checkpoints`.
fn checkpoint_dir(path: &Path) -> std::result::Result<PathBuf, String> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let mut steps: Vec<PathBuf> = std::fs::read_dir(path.join("checkpoints"))
        .map_err(|e| {
            format!(
                "distill.teacher = {:?}: no kiln checkpoint there ({e})",
                path.display().to_string()
            )
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                && p.join("state.json").is_file()
        })
        .collect();
    steps.sort();
    steps.pop().ok_or_else(|| {
        format!(
            "distill.teacher = {:?}: no kiln checkpoint there",
            path.display().to_string()
        )
    })
}

/// The teacher, ready to infer.
pub struct Teacher<B: Backend> {
    pub model: Fusion<B>,
    pub dims: Dims,
    pub cfg: DistillConfig,
}

impl<B: Backend> Teacher<B> {
    /// The teacher `cfg` names, for a student of `student`'s sizes:
    /// refused when it takes other inputs or classes.
    pub fn load(cfg: &DistillConfig, student: &Dims, device: &B::Device) -> Result<Self> {
        let dir = checkpoint_dir(Path::new(&cfg.teacher)).map_err(Error::Config)?;
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("state.json")).at("read", &dir)?)?;
        let dims: Dims = serde_json::from_value(state["dims"].clone()).map_err(|e| {
            Error::Config(format!("{}: not a kiln checkpoint ({e})", dir.display()))
        })?;
        let s = student;
        let differ: Vec<String> = [
            ("vocab", dims.vocab, s.vocab),
            ("max_tokens", dims.max_tokens, s.max_tokens),
            ("image features", dims.image, s.image),
            ("mel bands", dims.mels, s.mels),
            ("pixel height", dims.pixels[0], s.pixels[0]),
            ("pixel width", dims.pixels[1], s.pixels[1]),
            ("classes", dims.classes, s.classes),
            ("second task's classes", dims.classes2, s.classes2),
        ]
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(k, a, b)| format!("{k}: {a} in the teacher, {b} in this run"))
        .collect();
        if !differ.is_empty() {
            return Err(Error::Config(format!(
                "distill.teacher {}: the teacher takes other inputs or classes than this run:\n  {}",
                dir.display(),
                differ.join("\n  ")
            )));
        }
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let record = recorder
            .load(dir.join("model"), device)
            .map_err(|e| Error::Config(format!("{}: the teacher's weights: {e}", dir.display())))?;
        let model = Fusion::<B>::new(&dims, device).load_record(record);
        Ok(Teacher {
            model,
            dims,
            cfg: cfg.clone(),
        })
    }
}

/// `alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 -
/// alpha) * ce`, and the KL term's value.
pub fn loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    ce: Tensor<B, 1>,
    temperature: f64,
    alpha: f64,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let t = temperature;
    let rows = student.dims()[0] as f64;
    let p = softmax(teacher.clone().div_scalar(t), 1);
    let log_p = log_softmax(teacher.div_scalar(t), 1);
    let log_q = log_softmax(student.div_scalar(t), 1);
    let kl = (p * (log_p - log_q)).sum().div_scalar(rows);
    let total = ce.mul_scalar(1.0 - alpha) + kl.clone().mul_scalar(alpha * t * t);
    (total, kl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Int, TensorData};

    type A = Autodiff<NdArray<f32>>;

    fn logits() -> Tensor<A, 2> {
        A::seed(&NdArrayDevice::Cpu, 4);
        Tensor::random([6, 5], Distribution::Normal(0.0, 2.0), &NdArrayDevice::Cpu)
    }

    fn ce(l: Tensor<A, 2>) -> Tensor<A, 1> {
        let y = Tensor::<A, 1, Int>::from_data(
            TensorData::new(vec![0i64, 1, 2, 3, 4, 0], [6]),
            &NdArrayDevice::Cpu,
        );
        burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&NdArrayDevice::Cpu)
            .forward(l, y)
    }

    #[test]
    fn a_teacher_equal_to_the_student_adds_nothing() {
        let s = logits().require_grad();
        let (total, kl) = loss(s.clone(), s.clone().detach(), ce(s.clone()), 2.0, 1.0);
        assert_eq!(kl.into_scalar(), 0.0);
        assert_eq!(total.into_scalar(), 0.0);
    }

    #[test]
    fn alpha_zero_is_cross_entropy_to_the_bit() {
        let s = logits().require_grad();
        let t = logits().mul_scalar(0.5).detach();
        let (total, kl) = loss(s.clone(), t, ce(s.clone()), 3.0, 0.0);
        assert!(kl.into_scalar() > 0.0);
        let plain = ce(s.clone());
        assert_eq!(total.clone().into_scalar(), plain.clone().into_scalar());
        let g = |l: Tensor<A, 1>| {
            let grads = l.backward();
            s.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()
        };
        assert!(g(total) == g(plain), "the same gradient");
    }

    #[test]
    fn the_kl_term_is_hintons() {
        // Two rows of three classes against a hand computation.
        let dev = NdArrayDevice::Cpu;
        let s = Tensor::<A, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 0.0, 0.0, 1.0], [2, 3]),
            &dev,
        );
        let t = Tensor::<A, 2>::from_data(
            TensorData::new(vec![3.0f32, 2.0, 1.0, 1.0, 0.0, 0.0], [2, 3]),
            &dev,
        );
        let (_, kl) = loss(s, t, Tensor::zeros([1], &dev), 2.0, 0.5);
        let soft = |v: [f64; 3]| {
            let e: Vec<f64> = v.iter().map(|x| (x / 2.0).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect::<Vec<f64>>()
        };
        let mut want = 0.0;
        for (sv, tv) in [
            ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]),
            ([0.0, 0.0, 1.0], [1.0, 0.0, 0.0]),
        ] {
            let (p, q) = (soft(tv), soft(sv));
            want += p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>();
        }
        want /= 2.0;
        let got = kl.into_scalar() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
