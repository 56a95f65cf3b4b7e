//! One optimiser micro-step: the forward pass (through the [`Tap`] that
//! quantises or monitors it, in the compute type of mixed precision), the
//! loss (cross-entropy, with a teacher's distillation term), the backward
//! pass; and the gradient's norm.

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{FloatDType, Tensor};

use super::batch::{Batch, task_loss};
use super::device::{CastParams, in_f32};
use super::distill::{self, Teacher};
use super::model::Fusion;
use super::quant::Quantizer;
use super::tap::{Stats, Tap};

/// What a micro-step does besides the forward and backward pass.
pub(super) struct StepWith<'a, B: AutodiffBackend> {
    /// The forward and backward passes' float type (`None`: the master
    /// weights').
    pub(super) compute: Option<FloatDType>,
    pub(super) ce: &'a CrossEntropyLoss<B>,
    /// Observing or fake-quantising the quantised layers.
    pub(super) quant: Option<&'a mut Quantizer>,
    /// Recording the layers' activation statistics.
    pub(super) stats: Option<&'a mut Vec<(String, Stats)>>,
    /// Distilling from a teacher.
    pub(super) teacher: Option<&'a Teacher<B::InnerBackend>>,
}

/// What a micro-step gives: its loss, the task weight, the distillation
/// term and the gradients on the master weights.
pub(super) struct Stepped {
    pub(super) loss: f64,
    pub(super) weight: Option<f64>,
    pub(super) kl: Option<f64>,
    pub(super) grads: GradientsParams,
}

/// One micro-batch: its loss times `share` (its rows over the step's), and
/// the gradients on the master weights. With `compute`, the forward and
/// backward passes run in that type.
pub(super) fn micro_step<B: AutodiffBackend>(
    model: &Fusion<B>,
    with: &mut StepWith<'_, B>,
    (x, y): Batch<B>,
    share: f64,
) -> Stepped {
    use burn::tensor::ElementConversion;
    // The teacher's logits, on the inputs as they are (fp32).
    let taught = with.teacher.map(|t| t.model.forward(x.inner()));
    let cast;
    let (forward, x) = match with.compute {
        Some(dtype) => {
            cast = model.clone().map(&mut CastParams(dtype));
            (&cast, x.cast(dtype))
        }
        None => (model, x),
    };
    let mut tap = Tap {
        quant: with.quant.as_deref_mut(),
        stats: with.stats.as_deref_mut(),
    };
    let (logits, second) = forward.forward_with(x, &mut tap);
    let mut y = y.into_iter();
    // The losses in fp32 whatever the computation's type.
    let cast_back = with.compute.is_some();
    let mut kl_sum = None;
    let mut task = |logits: Tensor<B, 2>, target, teacher: Option<Tensor<B::InnerBackend, 2>>| {
        let logits = in_f32(logits, cast_back);
        let ce = task_loss(with.ce, logits.clone(), target);
        match (teacher, with.teacher) {
            (Some(t), Some(Teacher { cfg, .. })) => {
                let (loss, kl) = distill::loss(
                    logits,
                    Tensor::from_inner(t),
                    ce,
                    cfg.temperature,
                    cfg.alpha,
                );
                let kl = kl.into_scalar().elem::<f64>();
                kl_sum = Some(kl_sum.unwrap_or(0.0) + kl);
                loss
            }
            _ => ce,
        }
    };
    let (t1, t2) = match taught {
        Some((a, b)) => (Some(a), b),
        None => (None, None),
    };
    let first = task(logits, y.next().expect("a target a task"), t1);
    let (loss, weight) = match (second, forward.task_weight(), y.next()) {
        (Some(logits2), Some(w), Some(y2)) => {
            let w = in_f32(w, cast_back);
            let other = task(logits2, y2, t2);
            let value = w.clone().into_scalar().elem::<f64>();
            (first * w.clone() + other * (w.neg() + 1.0), Some(value))
        }
        _ => (first, None),
    };
    let loss = loss * share;
    let value = loss.clone().into_scalar().elem::<f64>();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    Stepped {
        loss: value,
        weight,
        kl: kl_sum,
        grads,
    }
}

/// The global L2 norm of the gradient (before clipping).
pub(super) fn grad_norm<B: AutodiffBackend>(model: &Fusion<B>, grads: &GradientsParams) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixing::mixed_target;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::module::ParamId;
    use burn::tensor::{DType, TensorData};

    use crate::train::batch::Target;
    use crate::train::device::Materialise;
    use crate::train::model::testing::{dims, inputs};
    use burn::backend::{Autodiff, NdArray};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::backend::Backend;

    type B = Autodiff<NdArray<f32>>;

    /// A batch of 4 with every input, made of small deterministic values.
    fn batch(device: &NdArrayDevice) -> Batch<B> {
        let inputs = inputs(device);
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
        let with = |compute| StepWith {
            compute,
            ce: &ce,
            quant: None,
            stats: None,
            teacher: None,
        };
        let a = micro_step(&model, &mut with(None), batch(&device), 0.5);
        let b = micro_step(
            &model,
            &mut with(Some(FloatDType::F64)),
            batch(&device),
            0.5,
        );
        let (l32, w32, g32) = (a.loss, a.weight, a.grads);
        let (l64, w64, g64) = (b.loss, b.weight, b.grads);
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
