//! The fusion model: token embeddings for the text, the image feature
//! vector, the image's pixels cut into patches (a strided convolution, as
//! ViT's patch embedding, for datasets that stored `pixel_values`) and the
//! log-mel frames projected into the same width, the text
//! attending to the image and audio tokens (cross-attention), a masked mean
//! over the text, and a classification head (two, for two tasks, with a
//! learned weight of their losses). Without text the image and
//! audio tokens are pooled; without image and audio the text attends to
//! itself: fully, or in a sliding window ([`sliding_attention`]) whose cost
//! is linear in the text's length.
//!
//! burn is the library: one binary trains on CPU (NdArray) and, where the
//! CUDA backend is compiled in, on an NVIDIA GPU; its CUDA build needs no
//! CUDA at build time (see DESIGN.md). Tensor math is burn's, not ours.
//!
//! Every linear and convolution layer is called through the forward
//! pass's [`Tap`]: plainly, or quantised (`quant`), or with its activations
//! recorded (`monitor`). A pruned model (`prune`) is the same model with
//! narrower attention projections and image/audio tokens ([`Dims`]).
//!
//! Mixed precision: the forward pass runs in whatever float type its
//! parameters and inputs have (the trainer casts a bf16 copy of the fp32
//! master weights); tensors made inside it take that type too.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor};

use super::attention::{Attention, AttentionDims, sliding_attention};
use super::tap::Tap;

/// The sizes the model is built with: from the dataset and the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dims {
    /// Token ids are below this (0 for no text).
    pub vocab: usize,
    /// Longest text, in tokens.
    pub max_tokens: usize,
    /// Image feature length (0 for no image).
    pub image: usize,
    /// Mel bands (0 for no audio).
    pub mels: usize,
    /// `pixel_values` height and width (0 for none).
    #[serde(default)]
    pub pixels: [usize; 2],
    /// The side of a square image patch.
    #[serde(default)]
    pub patch: usize,
    pub classes: usize,
    /// A second task's classes (0 for none).
    #[serde(default)]
    pub classes2: usize,
    pub d_model: usize,
    pub heads: usize,
    /// The text's sliding attention window (0: full attention).
    #[serde(default)]
    pub window: usize,
    /// Pruned widths (0: unpruned): the image and audio tokens', and a
    /// head's query/key and value channels.
    #[serde(default)]
    pub memory: usize,
    #[serde(default)]
    pub qk: usize,
    #[serde(default)]
    pub v: usize,
}

#[derive(Module, Debug)]
pub struct Fusion<B: Backend> {
    tokens: Option<Embedding<B>>,
    positions: Option<Embedding<B>>,
    image: Option<Linear<B>>,
    patches: Option<Conv2d<B>>,
    patch_positions: Option<Embedding<B>>,
    audio: Option<Linear<B>>,
    attention: Attention<B>,
    norm: LayerNorm<B>,
    head: Linear<B>,
    /// Multi-task: the second head, and the learned weight of the first
    /// task's loss, `sigmoid(linear(task_embedding[0]))`.
    head2: Option<Linear<B>>,
    task_embedding: Option<Embedding<B>>,
    task_weight: Option<Linear<B>>,
    /// The text's sliding attention window (0: full attention).
    window: usize,
}

/// One batch as tensors.
pub struct Inputs<B: Backend> {
    /// `[batch, tokens]` ids and the padding mask (true where padded).
    pub text: Option<(Tensor<B, 2, Int>, Tensor<B, 2, Bool>)>,
    /// `[batch, features]`.
    pub image: Option<Tensor<B, 2>>,
    /// `[batch, 3, height, width]`.
    pub pixels: Option<Tensor<B, 4>>,
    /// `[batch, frames, mels]`.
    pub audio: Option<Tensor<B, 3>>,
}

impl<B: Backend> Inputs<B> {
    /// The float inputs in `dtype` (ids and masks stay as they are).
    pub fn cast(self, dtype: FloatDType) -> Self {
        Inputs {
            text: self.text,
            image: self.image.map(|t| t.cast(dtype)),
            pixels: self.pixels.map(|t| t.cast(dtype)),
            audio: self.audio.map(|t| t.cast(dtype)),
        }
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> Inputs<B> {
    /// The inputs without their autodiff graph (for a model that only
    /// infers).
    pub fn inner(&self) -> Inputs<B::InnerBackend> {
        Inputs {
            text: self
                .text
                .as_ref()
                .map(|(ids, pad)| (ids.clone().inner(), pad.clone().inner())),
            image: self.image.clone().map(|t| t.inner()),
            pixels: self.pixels.clone().map(|t| t.inner()),
            audio: self.audio.clone().map(|t| t.inner()),
        }
    }
}

impl Dims {
    /// The attention's sizes.
    pub fn attention(&self) -> AttentionDims {
        let head = self.d_model / self.heads.max(1);
        let or = |v: usize, d: usize| if v == 0 { d } else { v };
        AttentionDims {
            d_model: self.d_model,
            memory: self.memory_width(),
            heads: self.heads,
            qk: or(self.qk, head),
            v: or(self.v, head),
            scale_dim: head,
        }
    }

    /// The width of the image and audio tokens.
    pub fn memory_width(&self) -> usize {
        match self.memory {
            0 => self.d_model,
            m => m,
        }
    }

    /// The model without its pruned widths.
    pub fn unpruned(&self) -> Dims {
        Dims {
            memory: 0,
            qk: 0,
            v: 0,
            ..*self
        }
    }

    /// Image patches per sample.
    pub fn patches(&self) -> usize {
        match self.patch {
            0 => 0,
            p => (self.pixels[0] / p) * (self.pixels[1] / p),
        }
    }
}

impl<B: Backend> Fusion<B> {
    pub fn new(d: &Dims, device: &B::Device) -> Self {
        let text = d.vocab > 0;
        let pixels = d.patches() > 0;
        let m = d.memory_width();
        Fusion {
            tokens: text.then(|| EmbeddingConfig::new(d.vocab, d.d_model).init(device)),
            positions: text.then(|| EmbeddingConfig::new(d.max_tokens, d.d_model).init(device)),
            image: (d.image > 0).then(|| LinearConfig::new(d.image, m).init(device)),
            patches: pixels.then(|| {
                Conv2dConfig::new([3, m], [d.patch, d.patch])
                    .with_stride([d.patch, d.patch])
                    .init(device)
            }),
            patch_positions: pixels.then(|| EmbeddingConfig::new(d.patches(), m).init(device)),
            audio: (d.mels > 0).then(|| LinearConfig::new(d.mels, m).init(device)),
            attention: Attention::new(d.attention(), device),
            norm: LayerNormConfig::new(d.d_model).init(device),
            head: LinearConfig::new(d.d_model, d.classes).init(device),
            head2: (d.classes2 > 0).then(|| LinearConfig::new(d.d_model, d.classes2).init(device)),
            task_embedding: (d.classes2 > 0)
                .then(|| EmbeddingConfig::new(2, d.d_model).init(device)),
            task_weight: (d.classes2 > 0).then(|| LinearConfig::new(d.d_model, 1).init(device)),
            window: d.window,
        }
    }

    /// Multi-task: the first task's loss weight `w`, shape `[1]`; the second
    /// task's is `1 - w`.
    pub fn task_weight(&self) -> Option<Tensor<B, 1>> {
        let (embedding, linear) = (self.task_embedding.as_ref()?, self.task_weight.as_ref()?);
        let device = embedding.weight.device();
        let first = Tensor::<B, 2, Int>::zeros([1, 1], &device);
        let w = linear.forward(embedding.forward(first)); // [1, 1, 1]
        Some(burn::tensor::activation::sigmoid(w).reshape([1]))
    }

    /// Class logits, `[batch, classes]`, and the second task's.
    pub fn forward(&self, x: Inputs<B>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        self.forward_with(x, &mut Tap::plain())
    }

    /// [`Self::forward`] with each layer called through `tap`.
    pub fn forward_with(
        &self,
        x: Inputs<B>,
        tap: &mut Tap,
    ) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let pooled = self.pool(x, tap);
        let second = self
            .head2
            .as_ref()
            .map(|h| tap.linear("head2", h, pooled.clone()));
        (tap.linear("head", &self.head, pooled), second)
    }

    /// The sample's representation, `[batch, d_model]`.
    fn pool(&self, x: Inputs<B>, tap: &mut Tap) -> Tensor<B, 2> {
        // The image and audio tokens, `[batch, n, d]`.
        let mut memory: Vec<Tensor<B, 3>> = Vec::new();
        if let (Some(proj), Some(features)) = (&self.image, x.image) {
            memory.push(tap.linear("image", proj, features).unsqueeze_dim(1));
        }
        if let (Some(conv), Some(positions), Some(pixels)) =
            (&self.patches, &self.patch_positions, x.pixels)
        {
            // [batch, d, rows, cols] -> [batch, rows * cols, d], plus the
            // patch's position.
            let p = tap.conv("patches", conv, pixels);
            let [batch, d, rows, cols] = p.dims();
            let p = p.reshape([batch, d, rows * cols]).swap_dims(1, 2);
            let at = Tensor::<B, 1, Int>::arange(0..(rows * cols) as i64, &p.device())
                .unsqueeze_dim::<2>(0);
            memory.push(p + positions.forward(at));
        }
        if let (Some(proj), Some(frames)) = (&self.audio, x.audio) {
            memory.push(tap.linear("audio", proj, frames));
        }
        let memory = (!memory.is_empty()).then(|| Tensor::cat(memory, 1));
        match (&self.tokens, &self.positions, x.text) {
            (Some(tokens), Some(positions), Some((ids, pad))) => {
                let [batch, len] = ids.dims();
                let device = ids.device();
                let at = Tensor::<B, 1, Int>::arange(0..len as i64, &device)
                    .unsqueeze_dim::<2>(0)
                    .repeat_dim(0, batch);
                let text = tokens.forward(ids) + positions.forward(at);
                let attended = match memory {
                    Some(m) => self.attention.forward(tap, text.clone(), m, None),
                    None if self.window > 0 => {
                        sliding_attention(&self.attention, tap, text.clone(), &pad, self.window)
                    }
                    None => {
                        self.attention
                            .forward(tap, text.clone(), text.clone(), Some(pad.clone()))
                    }
                };
                let h = self.norm.forward(text + attended);
                // Mean over the tokens that are not padding.
                let keep = pad.bool_not().float().cast(h.dtype()).unsqueeze_dim::<3>(2);
                let count = keep.clone().sum_dim(1).clamp_min(1.0);
                let pooled = (h * keep).sum_dim(1) / count;
                pooled.squeeze_dim::<2>(1)
            }
            _ => {
                let m = memory.expect("the trainer checks the model has an input");
                let h = self.norm.forward(m);
                h.mean_dim(1).squeeze_dim::<2>(1)
            }
        }
    }
}

/// A small model's sizes and a batch with every input, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use burn::tensor::TensorData;

    pub(crate) fn dims() -> Dims {
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
            window: 0,
            memory: 0,
            qk: 0,
            v: 0,
        }
    }

    /// 4 rows of text, image features, pixels and audio, made of small
    /// deterministic values.
    pub(crate) fn inputs<B: Backend>(device: &B::Device) -> Inputs<B> {
        let v = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
        let ids: Vec<i64> = (0..20).map(|i| (i * 7 % 11) as i64).collect();
        let pad: Vec<bool> = (0..20).map(|i| i % 5 > 2 + (i / 5) % 2).collect();
        Inputs {
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
        }
    }
}
