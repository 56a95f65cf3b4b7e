//! The forward pass's tap: every linear and convolution layer of the model
//! is called through it, so one forward pass serves plain training,
//! quantisation (observing inputs, fake quantisation, integer inference:
//! [`super::quant`]) and activation monitoring.
//!
//! Monitoring records, for each layer's output, its mean, standard
//! deviation, largest magnitude, the share of exact zeros, and the share
//! of outliers (`saturated`): values more than six standard deviations
//! from the mean, which stretch an 8-bit range until the rest of the
//! values share a few levels.

use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use super::quant::Quantizer;

/// One layer's activation statistics: mean, std, max |x|, zero share,
/// saturated share.
pub type Stats = [f64; 5];

/// What the forward pass does at each layer.
pub struct Tap<'a> {
    pub quant: Option<&'a mut Quantizer>,
    /// Each layer's output statistics, in call order, when monitoring.
    pub stats: Option<&'a mut Vec<(String, Stats)>>,
}

impl Tap<'static> {
    /// Layers called as they are.
    pub fn plain() -> Self {
        Tap {
            quant: None,
            stats: None,
        }
    }
}

impl Tap<'_> {
    pub fn linear<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let y = match self.quant.as_deref_mut() {
            None => layer.forward(x),
            Some(q) => q.linear(name, layer, x),
        };
        self.record(name, &y);
        y
    }

    pub fn conv<B: Backend>(
        &mut self,
        name: &str,
        layer: &Conv2d<B>,
        x: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let y = match self.quant.as_deref_mut() {
            None => layer.forward(x),
            Some(q) => q.conv(name, layer, x),
        };
        self.record(name, &y);
        y
    }

    fn record<B: Backend, const D: usize>(&mut self, name: &str, y: &Tensor<B, D>) {
        if let Some(stats) = self.stats.as_deref_mut() {
            stats.push((name.to_string(), statistics(y.clone())));
        }
    }
}

/// A tensor's [`Stats`], computed on its device and read once.
pub fn statistics<B: Backend, const D: usize>(y: Tensor<B, D>) -> Stats {
    let n = y.shape().num_elements();
    let flat = y.detach().cast(FloatDType::F32).reshape([n]);
    let mean = flat.clone().mean();
    let centred = flat.clone() - mean.clone();
    let std = centred.clone().powi_scalar(2).mean().sqrt();
    let max_abs = flat.clone().abs().max();
    let zero = flat.equal_elem(0.0).float().mean();
    let outliers = centred
        .abs()
        .greater(std.clone().mul_scalar(6.0).expand([n]))
        .float()
        .mean();
    let all = Tensor::cat(vec![mean, std, max_abs, zero, outliers], 0);
    let v = all
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default();
    let mut out = [f64::NAN; 5];
    for (o, x) in out.iter_mut().zip(v) {
        *o = x as f64;
    }
    out
}

/// What is wrong with a layer's statistics, if anything: a value that is
/// not finite, or activations past `explode` in magnitude.
pub fn alarm(s: &Stats, explode: f64) -> Option<String> {
    let names = ["mean", "std", "max_abs", "zero", "saturated"];
    if let Some(i) = s.iter().position(|v| !v.is_finite()) {
        return Some(format!("{} is {}", names[i], s[i]));
    }
    (s[2] > explode).then(|| format!("max |x| = {:.3e} is past {explode:.0e}", s[2]))
}
