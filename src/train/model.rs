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
//! Mixed precision: the forward pass runs in whatever float type its
//! parameters and inputs have (the trainer casts a bf16 copy of the fp32
//! master weights); tensors made inside it take that type too.

use burn::module::Module;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor};

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
}

#[derive(Module, Debug)]
pub struct Fusion<B: Backend> {
    tokens: Option<Embedding<B>>,
    positions: Option<Embedding<B>>,
    image: Option<Linear<B>>,
    patches: Option<Conv2d<B>>,
    patch_positions: Option<Embedding<B>>,
    audio: Option<Linear<B>>,
    attention: MultiHeadAttention<B>,
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

impl Dims {
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
        Fusion {
            tokens: text.then(|| EmbeddingConfig::new(d.vocab, d.d_model).init(device)),
            positions: text.then(|| EmbeddingConfig::new(d.max_tokens, d.d_model).init(device)),
            image: (d.image > 0).then(|| LinearConfig::new(d.image, d.d_model).init(device)),
            patches: pixels.then(|| {
                Conv2dConfig::new([3, d.d_model], [d.patch, d.patch])
                    .with_stride([d.patch, d.patch])
                    .init(device)
            }),
            patch_positions: pixels
                .then(|| EmbeddingConfig::new(d.patches(), d.d_model).init(device)),
            audio: (d.mels > 0).then(|| LinearConfig::new(d.mels, d.d_model).init(device)),
            attention: MultiHeadAttentionConfig::new(d.d_model, d.heads)
                .with_dropout(0.0)
                .init(device),
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
        let pooled = self.pool(x);
        let second = self.head2.as_ref().map(|h| h.forward(pooled.clone()));
        (self.head.forward(pooled), second)
    }

    /// The sample's representation, `[batch, d_model]`.
    fn pool(&self, x: Inputs<B>) -> Tensor<B, 2> {
        // The image and audio tokens, `[batch, n, d]`.
        let mut memory: Vec<Tensor<B, 3>> = Vec::new();
        if let (Some(proj), Some(features)) = (&self.image, x.image) {
            memory.push(proj.forward(features).unsqueeze_dim(1));
        }
        if let (Some(conv), Some(positions), Some(pixels)) =
            (&self.patches, &self.patch_positions, x.pixels)
        {
            // [batch, d, rows, cols] -> [batch, rows * cols, d], plus the
            // patch's position.
            let p = conv.forward(pixels);
            let [batch, d, rows, cols] = p.dims();
            let p = p.reshape([batch, d, rows * cols]).swap_dims(1, 2);
            let at = Tensor::<B, 1, Int>::arange(0..(rows * cols) as i64, &p.device())
                .unsqueeze_dim::<2>(0);
            memory.push(p + positions.forward(at));
        }
        if let (Some(proj), Some(frames)) = (&self.audio, x.audio) {
            memory.push(proj.forward(frames));
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
                    Some(m) => {
                        self.attention
                            .forward(MhaInput::new(text.clone(), m.clone(), m))
                            .context
                    }
                    None if self.window > 0 => {
                        sliding_attention(&self.attention, text.clone(), &pad, self.window)
                    }
                    None => {
                        self.attention
                            .forward(MhaInput::self_attn(text.clone()).mask_pad(pad.clone()))
                            .context
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

/// Self-attention in which each token attends to the tokens less than `w`
/// positions away (before and after it), with `mha`'s projections, heads
/// and masking value; `pad` is true where `x` is padding. The text is cut
/// into blocks of `w` tokens and a block's queries meet the keys of itself
/// and its two neighbours, so time and memory grow as `length * 3w`, not
/// `length^2`. With `w` at least the length, this is full attention.
pub fn sliding_attention<B: Backend>(
    mha: &MultiHeadAttention<B>,
    x: Tensor<B, 3>,
    pad: &Tensor<B, 2, Bool>,
    w: usize,
) -> Tensor<B, 3> {
    let [batch, len, d_model] = x.dims();
    let (heads, d_k) = (mha.n_heads, mha.d_k);
    let w = w.min(len).max(1);
    let blocks = len.div_ceil(w);
    let padded = blocks * w;
    let device = x.device();
    // [batch, len, d] -> [batch * heads, blocks, w, d_k], zeros past the end.
    let project = |linear: &Linear<B>, x: Tensor<B, 3>| {
        let t = linear.forward(x);
        let t = match padded - len {
            0 => t,
            extra => Tensor::cat(
                vec![
                    t.clone(),
                    t.zeros_like().slice([0..batch, 0..extra, 0..d_model]),
                ],
                1,
            ),
        };
        t.reshape([batch, padded, heads, d_k])
            .swap_dims(1, 2)
            .reshape([batch * heads, blocks, w, d_k])
    };
    // A block's keys: the previous, its own and the next block, [.., 3w, ..].
    let neighbours = |t: Tensor<B, 4>| {
        let edge = t.zeros_like().slice([0..batch * heads, 0..1, 0..w, 0..d_k]);
        let ext = Tensor::cat(vec![edge.clone(), t, edge], 1);
        Tensor::cat(
            vec![
                ext.clone()
                    .slice([0..batch * heads, 0..blocks, 0..w, 0..d_k]),
                ext.clone()
                    .slice([0..batch * heads, 1..blocks + 1, 0..w, 0..d_k]),
                ext.slice([0..batch * heads, 2..blocks + 2, 0..w, 0..d_k]),
            ],
            2,
        )
    };
    let q = project(&mha.query, x.clone());
    let k = neighbours(project(&mha.key, x.clone()));
    let v = neighbours(project(&mha.value, x));
    let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d_k as f32).sqrt()); // [bh, blocks, w, 3w]
    // Masked: keys `w` or more positions away, padding, and past either end.
    // The query at a of block b and the key at c of the 3w (b-1, b, b+1) are
    // b*w + a and (b-1)*w + c: less than w apart when a < c < a + 2w.
    let far: Vec<bool> = (0..w)
        .flat_map(|a| (0..3 * w).map(move |c| !(a < c && c < a + 2 * w)))
        .collect();
    let far =
        Tensor::<B, 2, Bool>::from_data(burn::tensor::TensorData::new(far, [w, 3 * w]), &device)
            .reshape([1, 1, w, 3 * w]);
    // Key validity per position: padding, the zeros past the end and the
    // blocks before the first and after the last.
    let invalid = Tensor::cat(
        vec![
            Tensor::<B, 2, Bool>::full([batch, w], true, &device),
            pad.clone(),
            Tensor::<B, 2, Bool>::full([batch, padded - len + w], true, &device),
        ],
        1,
    ); // [batch, (blocks + 2) * w]
    let invalid = invalid.reshape([batch, blocks + 2, w]);
    let invalid = Tensor::cat(
        vec![
            invalid.clone().slice([0..batch, 0..blocks, 0..w]),
            invalid.clone().slice([0..batch, 1..blocks + 1, 0..w]),
            invalid.slice([0..batch, 2..blocks + 2, 0..w]),
        ],
        2,
    ); // [batch, blocks, 3w]
    let invalid = invalid
        .reshape([batch, 1, blocks, 1, 3 * w])
        .expand([batch, heads, blocks, w, 3 * w])
        .reshape([batch * heads, blocks, w, 3 * w]);
    let masked = invalid.bool_or(far.expand([batch * heads, blocks, w, 3 * w]));
    let scores = scores.mask_fill(masked, mha.min_float);
    let weights = burn::tensor::activation::softmax(scores, 3);
    let context = weights.matmul(v); // [bh, blocks, w, d_k]
    let context = context
        .reshape([batch, heads, padded, d_k])
        .swap_dims(1, 2)
        .slice([0..batch, 0..len, 0..heads, 0..d_k])
        .reshape([batch, len, d_model]);
    mha.output.forward(context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, TensorData};

    type B = NdArray<f32>;

    fn mha(d: usize, heads: usize) -> MultiHeadAttention<B> {
        B::seed(&Default::default(), 5);
        MultiHeadAttentionConfig::new(d, heads)
            .with_dropout(0.0)
            .init(&Default::default())
    }

    fn pad(batch: usize, len: usize, valid: &[usize]) -> Tensor<B, 2, Bool> {
        let v: Vec<bool> = (0..batch)
            .flat_map(|b| (0..len).map(move |i| i >= valid[b]))
            .collect();
        Tensor::from_data(TensorData::new(v, [batch, len]), &Default::default())
    }

    #[test]
    fn a_window_covering_the_text_is_full_attention() {
        let m = mha(16, 4);
        let x = Tensor::<B, 3>::random(
            [2, 11, 16],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let p = pad(2, 11, &[11, 7]);
        let full = m
            .forward(MhaInput::self_attn(x.clone()).mask_pad(p.clone()))
            .context;
        for w in [11, 12, 40] {
            let s = sliding_attention(&m, x.clone(), &p, w);
            let (a, b) = (
                full.clone().into_data().to_vec::<f32>().unwrap(),
                s.into_data().to_vec::<f32>().unwrap(),
            );
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() < 1e-5, "window {w}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn a_narrow_window_sees_only_its_neighbours() {
        // Each token's output is that of full attention with a mask that
        // hides keys w or more positions away.
        let (len, w) = (13, 3);
        let m = mha(8, 2);
        let x = Tensor::<B, 3>::random(
            [1, len, 8],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let p = pad(1, len, &[12]);
        let s = sliding_attention(&m, x.clone(), &p, w)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let far: Vec<bool> = (0..len)
            .flat_map(|i| (0..len).map(move |j| i.abs_diff(j) >= w))
            .collect();
        let far = Tensor::<B, 3, Bool>::from_data(
            TensorData::new(far, [1, len, len]),
            &Default::default(),
        );
        let full = m
            .forward(MhaInput::self_attn(x).mask_pad(p).mask_attn(far))
            .context
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (u, v) in full.iter().zip(&s) {
            assert!((u - v).abs() < 1e-5, "{u} vs {v}");
        }
    }
}
