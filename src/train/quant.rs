//! Quantisation (`[quant]`): quantisation-aware training with fake
//! quantisation, post-training quantisation, and the int8 model, written
//! and evaluated on integers.
//!
//! The scheme, as PyTorch's `torch.ao.quantization` default QAT
//! configuration with the differences stated:
//! - weights: int8, per output channel, symmetric: `scale = max|w_c| /
//!   127`, zero point 0, values in `[-127, 127]` (PyTorch divides by 127.5
//!   and allows -128; the symmetric range keeps `-w` representable);
//! - activations: uint8, per tensor, affine, at the input of each
//!   quantised layer (where an integer kernel reads them): `scale = (max -
//!   min) / 255` over a range that includes 0, `zero_point = -round(min /
//!   scale)`; the range is the min and max the observer saw during the
//!   `calibration_steps` warm-up (PyTorch's `MinMaxObserver`), then frozen;
//! - fake quantisation `x' = (clamp(round(x / scale + zp), qmin, qmax) -
//!   zp) * scale` (rounding half to even, as `torch.round`), with the
//!   straight-through estimator: the gradient passes where `round(x / scale
//!   + zp)` is inside `[qmin, qmax]` and is zero outside (PyTorch's
//!   `FakeQuantize`);
//! - quantised: every linear and convolution layer (the image, audio and
//!   patch projections, the attention's four projections, the heads);
//!   embeddings, the layer norm, the attention's score and context
//!   products and the learned task weight stay float, as in PyTorch's
//!   eager-mode QAT.
//!
//! With `qat = true` the first `calibration_steps` steps train in float
//! while observing, and the rest train through fake quantisation; with
//! `qat = false` the float model is calibrated on that many training
//! batches after training (post-training quantisation). Either way the run
//! ends by writing `OUT/model-int8.safetensors` and evaluating it with
//! integer weights and activations: `int32` sums of `int8 x uint8`
//! products, scaled back to float per output channel.
//!
//! The int8 model's file is [`super::int8`]'s.

use std::collections::BTreeMap;

use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{FloatDType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::kernel::Packed;

/// `[quant]` in the training file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    /// Train through fake quantisation after the calibration warm-up;
    /// `false`: quantise the trained float model (post-training).
    #[serde(default = "yes")]
    pub qat: bool,
    /// Steps (or, after training, batches) the activation ranges are
    /// observed over.
    #[serde(default = "default_calibration")]
    pub calibration_steps: u64,
}

fn yes() -> bool {
    true
}
fn default_calibration() -> u64 {
    20
}

/// The smallest scale (PyTorch's `torch.finfo(float32).eps`).
pub(super) const EPS: f32 = f32::EPSILON;
/// Weights' integer range.
pub(super) const W_MAX: f32 = 127.0;
/// Activations' integer range.
const A_MAX: f32 = 255.0;

/// The layers quantised, by the names the model calls them.
pub const LAYERS: [&str; 9] = [
    "image",
    "patches",
    "audio",
    "attention.query",
    "attention.key",
    "attention.value",
    "attention.output",
    "head",
    "head2",
];

/// Fake quantisation of `x` with per-tensor `scale` and `zero` into
/// `[qmin, qmax]`, gradients passed straight through inside the range.
pub fn fake_quant<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    scale: f32,
    zero: f32,
    qmin: f32,
    qmax: f32,
) -> Tensor<B, D> {
    let q = x
        .clone()
        .detach()
        .div_scalar(scale)
        .add_scalar(zero)
        .round();
    let inside = q
        .clone()
        .greater_equal_elem(qmin)
        .bool_and(q.clone().lower_equal_elem(qmax));
    let fq = q.clamp(qmin, qmax).sub_scalar(zero).mul_scalar(scale);
    straight_through(x, fq, inside)
}

/// `fq`'s values with `x`'s gradient where `inside`, none elsewhere.
fn straight_through<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    fq: Tensor<B, D>,
    inside: Tensor<B, D, burn::tensor::Bool>,
) -> Tensor<B, D> {
    let xi = x.mask_fill(inside.bool_not(), 0.0);
    fq + (xi.clone() - xi.detach())
}

/// Per-channel symmetric fake quantisation of a weight whose output
/// channels are along `channel` (1 for a linear layer's `[in, out]`, 0 for
/// a convolution's `[out, in, kh, kw]`).
pub fn fake_quant_weight<B: Backend, const D: usize>(
    w: Tensor<B, D>,
    channel: usize,
) -> Tensor<B, D> {
    let dims = w.dims();
    let out = dims[channel];
    let abs = w.clone().detach().abs().swap_dims(0, channel);
    let rest = abs.shape().num_elements() / out;
    let mut shape = [1usize; D];
    shape[channel] = out;
    let scale = abs
        .reshape([out, rest])
        .max_dim(1)
        .div_scalar(W_MAX)
        .clamp_min(EPS)
        .reshape(shape);
    let q = w.clone().detach().div(scale.clone()).round();
    let inside = q
        .clone()
        .greater_equal_elem(-W_MAX)
        .bool_and(q.clone().lower_equal_elem(W_MAX));
    let fq = q.clamp(-W_MAX, W_MAX).mul(scale);
    straight_through(w, fq, inside)
}

/// An activation range's scale and zero point.
pub fn act_params(min: f32, max: f32) -> (f32, f32) {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let scale = ((hi - lo) / A_MAX).max(EPS);
    let zero = (-(lo / scale).round_ties_even()).clamp(0.0, A_MAX);
    (scale, zero)
}

/// What the quantised layers do in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Float, widening each layer's observed input range.
    Observe,
    /// Fake quantisation of weights and inputs.
    Fake,
    /// Integer weights and inputs (`int8` layers, on the host).
    Int8,
}

/// One int8 layer.
#[derive(Debug, Clone)]
pub struct QLayer {
    /// `[out][in]` (a convolution: `[out][in * kh * kw]`).
    pub weight: Vec<i8>,
    pub shape: Vec<usize>,
    pub scales: Vec<f32>,
    pub input_scale: f32,
    pub input_zero: f32,
    pub bias: Option<Vec<f32>>,
    /// The weights packed for the integer product.
    packed: Packed,
}

impl QLayer {
    pub fn new(
        weight: Vec<i8>,
        shape: Vec<usize>,
        scales: Vec<f32>,
        (input_scale, input_zero): (f32, f32),
        bias: Option<Vec<f32>>,
    ) -> QLayer {
        let packed = Packed::new(&weight, shape[0]);
        QLayer {
            weight,
            shape,
            scales,
            input_scale,
            input_zero,
            bias,
            packed,
        }
    }

    fn out(&self) -> usize {
        self.shape[0]
    }
    fn inputs(&self) -> usize {
        self.weight.len() / self.out()
    }

    /// The input's integer levels, `clamp(round(x / scale + zp), 0, 255)`
    /// (as floats, computed where the tensor lives: a new tensor, which
    /// the host then reads without gathering).
    fn levels<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        x.div_scalar(self.input_scale)
            .add_scalar(self.input_zero)
            .round()
            .clamp(0.0, A_MAX)
    }

    /// `rows` inputs of `inputs()` integer levels each ([`Self::levels`])
    /// through the layer on integers.
    fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        use rayon::prelude::*;
        // Rows a task.
        const ROWS: usize = 64;
        let (n_in, n_out) = (self.inputs(), self.out());
        let (s, z) = (self.input_scale, self.input_zero);
        debug_assert_eq!(x.len(), rows * n_in);
        let mut out = vec![0f32; rows * n_out];
        out.par_chunks_mut(ROWS * n_out)
            .zip(x.par_chunks(ROWS * n_in))
            .for_each(|(y, xr)| {
                let xq: Vec<i16> = xr.iter().map(|&v| (v - z) as i16).collect();
                let mut acc = vec![0i32; y.len()];
                self.packed.product(&xq, &mut acc);
                for (row, sums) in y.chunks_exact_mut(n_out).zip(acc.chunks_exact(n_out)) {
                    for (o, (y, a)) in row.iter_mut().zip(sums).enumerate() {
                        *y = *a as f32 * (s * self.scales[o])
                            + self.bias.as_ref().map_or(0.0, |b| b[o]);
                    }
                }
            });
        out
    }
}

/// The quantisation state of a run: the mode, the observed input ranges
/// by layer, and (to evaluate an int8 model) its integer layers.
#[derive(Debug, Clone)]
pub struct Quantizer {
    pub mode: Mode,
    pub ranges: BTreeMap<String, (f32, f32)>,
    pub int8: BTreeMap<String, QLayer>,
}

impl Quantizer {
    pub fn new(mode: Mode) -> Self {
        Quantizer {
            mode,
            ranges: BTreeMap::new(),
            int8: BTreeMap::new(),
        }
    }

    /// The ranges as exact bits, for a checkpoint.
    pub fn ranges_bits(&self) -> BTreeMap<String, [u32; 2]> {
        self.ranges
            .iter()
            .map(|(k, (a, b))| (k.clone(), [a.to_bits(), b.to_bits()]))
            .collect()
    }

    pub fn set_ranges_bits(&mut self, bits: &BTreeMap<String, [u32; 2]>) {
        self.ranges = bits
            .iter()
            .map(|(k, [a, b])| (k.clone(), (f32::from_bits(*a), f32::from_bits(*b))))
            .collect();
    }

    fn observe<B: Backend, const D: usize>(&mut self, name: &str, x: &Tensor<B, D>) {
        let f = x.clone().detach().cast(FloatDType::F32);
        let n = f.shape().num_elements();
        let f = f.reshape([n]);
        let both = Tensor::cat(vec![f.clone().min(), f.max()], 0);
        let v = both
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        let (lo, hi) = (v[0], v[1]);
        let r = self.ranges.entry(name.to_string()).or_insert((lo, hi));
        *r = (r.0.min(lo), r.1.max(hi));
    }

    /// The input fake-quantised with its layer's range (observed first
    /// when the layer has none yet).
    fn fake_input<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        if !self.ranges.contains_key(name) {
            self.observe(name, &x);
        }
        let (lo, hi) = self.ranges[name];
        let (s, z) = act_params(lo, hi);
        fake_quant(x, s, z, 0.0, A_MAX)
    }

    pub fn linear<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self.mode {
            Mode::Observe => {
                self.observe(name, &x);
                layer.forward(x)
            }
            Mode::Fake => {
                let w = fake_quant_weight(layer.weight.val(), 1);
                linear(
                    self.fake_input(name, x),
                    w,
                    layer.bias.as_ref().map(|b| b.val()),
                )
            }
            Mode::Int8 => {
                let l = self.layer(name);
                let dims = x.dims();
                let rows = dims[..D - 1].iter().product();
                let device = x.device();
                let data = l.levels(x).into_data().convert::<f32>();
                let y = l.apply(data.as_slice::<f32>().expect("f32"), rows);
                let mut shape = dims;
                shape[D - 1] = l.out();
                Tensor::from_data(TensorData::new(y, shape), &device)
            }
        }
    }

    pub fn conv<B: Backend>(
        &mut self,
        name: &str,
        layer: &Conv2d<B>,
        x: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        match self.mode {
            Mode::Observe => {
                self.observe(name, &x);
                layer.forward(x)
            }
            Mode::Fake => {
                let w = fake_quant_weight(layer.weight.val(), 0);
                let options = ConvOptions::new(layer.stride, [0, 0], layer.dilation, layer.groups);
                let x = self.fake_input(name, x);
                conv2d(x, w, layer.bias.as_ref().map(|b| b.val()), options)
            }
            Mode::Int8 => {
                // The patch embedding: stride = kernel, no padding, so the
                // patches are the rows of one integer product.
                let l = self.layer(name);
                let [b, c, h, w] = x.dims();
                let p = layer.kernel_size[0];
                assert!(layer.stride == layer.kernel_size && layer.kernel_size == [p, p]);
                let (rows, cols) = (h / p, w / p);
                let device = x.device();
                let data = l.levels(x).into_data().convert::<f32>();
                let v = data.as_slice::<f32>().expect("f32");
                let mut patches = Vec::with_capacity(b * rows * cols * c * p * p);
                for bi in 0..b {
                    for r in 0..rows {
                        for cc in 0..cols {
                            for ch in 0..c {
                                for ky in 0..p {
                                    let at = ((bi * c + ch) * h + r * p + ky) * w + cc * p;
                                    patches.extend_from_slice(&v[at..at + p]);
                                }
                            }
                        }
                    }
                }
                let y = l.apply(&patches, b * rows * cols);
                let out = l.out();
                // [b, rows, cols, out] -> [b, out, rows, cols]
                Tensor::<B, 4>::from_data(TensorData::new(y, [b, rows, cols, out]), &device)
                    .permute([0, 3, 1, 2])
            }
        }
    }

    fn layer(&self, name: &str) -> &QLayer {
        self.int8
            .get(name)
            .unwrap_or_else(|| panic!("the int8 model has no layer {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::device::Materialise;
    use crate::train::int8::{quantise_weight, read_int8, write_int8};
    use crate::train::model::Fusion;
    use crate::train::model::testing::{dims, inputs};
    use crate::train::tap::Tap;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;

    type B = NdArray<f32>;
    type A = Autodiff<NdArray<f32>>;

    fn values() -> Vec<f32> {
        (0..64)
            .map(|i| (i as f32 - 20.0) * 0.37 + (i as f32 * 1.3).sin())
            .collect()
    }

    #[test]
    fn fake_quantisation_is_the_formula() {
        let (s, z) = (0.05f32, 40.0f32);
        let x = Tensor::<B, 1>::from_data(TensorData::new(values(), [64]), &NdArrayDevice::Cpu);
        let y = fake_quant(x, s, z, 0.0, 255.0)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (x, y) in values().iter().zip(&y) {
            let want = ((x / s + z).round_ties_even().clamp(0.0, 255.0) - z) * s;
            assert_eq!(*y, want, "x = {x}");
        }
        // Values past the range saturate.
        assert!(y.contains(&((255.0 - z) * s)) && y.contains(&(-z * s)));
    }

    #[test]
    fn gradients_pass_straight_through_inside_the_range_only() {
        let (s, z) = (0.05f32, 40.0f32);
        let device = NdArrayDevice::Cpu;
        let x = Tensor::<A, 1>::from_data(TensorData::new(values(), [64]), &device).require_grad();
        let grads = fake_quant(x.clone(), s, z, 0.0, 255.0).sum().backward();
        let g = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let (mut inside, mut outside) = (0, 0);
        for (x, g) in values().iter().zip(&g) {
            let q = (x / s + z).round_ties_even();
            match (0.0..=255.0).contains(&q) {
                true => {
                    inside += 1;
                    assert_eq!(*g, 1.0, "x = {x}")
                }
                false => {
                    outside += 1;
                    assert_eq!(*g, 0.0, "x = {x}")
                }
            }
        }
        assert!(inside > 0 && outside > 0, "both sides are tried");
        // A weight's own range holds all of it: every gradient passes.
        let w =
            Tensor::<A, 2>::from_data(TensorData::new(values(), [8, 8]), &device).require_grad();
        let grads = fake_quant_weight(w.clone(), 1).sum().backward();
        let g = w.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        assert!(g.iter().all(|v| *v == 1.0));
    }

    #[test]
    fn weights_are_quantised_per_output_channel_to_127_levels() {
        // A linear layer's [in, out]: channel c is column c.
        let w: Vec<f32> = vec![1.0, -0.5, 0.25, 2.0, -1.0, 0.125];
        let data = TensorData::new(w.clone(), [3, 2]);
        let (q, shape, scales) = quantise_weight(&data, true);
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(scales, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(q, vec![127, 32, -127, -32, 127, 8]);
        let fq = fake_quant_weight(Tensor::<B, 2>::from_data(data, &NdArrayDevice::Cpu), 1)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (i, v) in fq.iter().enumerate() {
            let (row, col) = (i / 2, i % 2);
            assert_eq!(*v, q[col * 3 + row] as f32 * scales[col]);
        }
    }

    #[test]
    fn an_int8_model_on_integers_matches_its_fake_quantised_forward() {
        let device = NdArrayDevice::Cpu;
        B::seed(&device, 3);
        let d = dims();
        let model = Fusion::<B>::new(&d, &device).map(&mut Materialise);
        let mut q = Quantizer::new(Mode::Observe);
        let run = |q: &mut Quantizer, m: &Fusion<B>| {
            let mut tap = Tap {
                quant: Some(q),
                stats: None,
            };
            let (a, b) = m.forward_with(inputs(&device), &mut tap);
            let v = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().unwrap();
            (v(a), v(b.unwrap()))
        };
        run(&mut q, &model);
        assert_eq!(q.ranges.len(), LAYERS.len(), "every layer observed");
        q.mode = Mode::Fake;
        let fake = run(&mut q, &model);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model-int8.safetensors");
        let bytes = write_int8(&model, &d, &q, &path).unwrap();
        assert!(bytes > 0);
        let (d8, int8, mut q8) = read_int8::<B>(&path, &device).unwrap();
        assert_eq!(d8, d);
        assert_eq!(q8.int8.len(), LAYERS.len());
        let ints = run(&mut q8, &int8);
        for (f, i) in [(fake.0, ints.0), (fake.1, ints.1)] {
            let lo = f.iter().cloned().fold(f32::MAX, f32::min);
            let hi = f.iter().cloned().fold(f32::MIN, f32::max);
            let step = (hi - lo) / 255.0;
            for (a, b) in f.iter().zip(&i) {
                assert!(
                    (a - b).abs() <= step,
                    "{a} vs {b}: more than one step {step}"
                );
            }
        }
    }
}
