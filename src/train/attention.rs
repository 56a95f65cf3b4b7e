//! The model's attention: multi-head scaled dot-product attention whose
//! projections may be narrower than the model (a pruned model's heads keep
//! fewer query/key and value channels, [`super::prune`]), computed as
//! burn's `MultiHeadAttention` computes it; and sliding-window
//! self-attention ([`sliding_attention`]) with the same projections.
//!
//! Every projection is called through the forward pass's [`Tap`], which
//! quantises it, runs it on integers or records its activations.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::tap::Tap;

/// The value masked scores take (burn's `MultiHeadAttention` default).
const MIN_FLOAT: f32 = -1.0e4;

/// Multi-head attention: `heads` heads of `qk` query/key and `v` value
/// channels each, scores scaled by `1/sqrt(scale_dim)`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub output: Linear<B>,
    pub heads: usize,
    pub qk: usize,
    pub v: usize,
    /// The unpruned head width, which scales the scores.
    pub scale_dim: usize,
}

/// The sizes of an [`Attention`]: the model's width, the width of the
/// tokens attended to, and per head the query/key and value channels.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDims {
    pub d_model: usize,
    pub memory: usize,
    pub heads: usize,
    pub qk: usize,
    pub v: usize,
    pub scale_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// Initialised as burn's `MultiHeadAttention` is (the same
    /// initialiser, the projections in the same order).
    pub fn new(a: AttentionDims, device: &B::Device) -> Self {
        let init = Initializer::KaimingUniform {
            gain: 1.0 / 3f64.sqrt(),
            fan_out_only: false,
        };
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(init.clone())
                .init(device)
        };
        Attention {
            query: linear(a.d_model, a.heads * a.qk),
            key: linear(a.memory, a.heads * a.qk),
            value: linear(a.memory, a.heads * a.v),
            output: linear(a.heads * a.v, a.d_model),
            heads: a.heads,
            qk: a.qk,
            v: a.v,
            scale_dim: a.scale_dim,
        }
    }

    /// `query` `[batch, n, d_model]` attending to `memory`
    /// `[batch, m, memory]`; `pad` `[batch, m]` is true at keys to ignore.
    pub fn forward(
        &self,
        tap: &mut Tap,
        query: Tensor<B, 3>,
        memory: Tensor<B, 3>,
        pad: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let [batch, n, _] = query.dims();
        let m = memory.dims()[1];
        let h = self.heads;
        let q = tap
            .linear("attention.query", &self.query, query)
            .reshape([batch, n, h, self.qk])
            .swap_dims(1, 2);
        let k = tap
            .linear("attention.key", &self.key, memory.clone())
            .reshape([batch, m, h, self.qk])
            .swap_dims(1, 2);
        let v = tap
            .linear("attention.value", &self.value, memory)
            .reshape([batch, m, h, self.v])
            .swap_dims(1, 2);
        let mut scores = q
            .matmul(k.transpose())
            .div_scalar((self.scale_dim as f32).sqrt());
        if let Some(pad) = pad {
            scores = scores.mask_fill(pad.reshape([batch, 1, 1, m]), MIN_FLOAT);
        }
        let weights = burn::tensor::activation::softmax(scores, 3);
        let context = weights
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, n, h * self.v]);
        tap.linear("attention.output", &self.output, context)
    }
}

/// Self-attention in which each token attends to the tokens less than `w`
/// positions away (before and after it), with `mha`'s projections, heads
/// and masking value; `pad` is true where `x` is padding. The text is cut
/// into blocks of `w` tokens and a block's queries meet the keys of itself
/// and its two neighbours, so time and memory grow as `length * 3w`, not
/// `length^2`. With `w` at least the length, this is full attention.
pub fn sliding_attention<B: Backend>(
    mha: &Attention<B>,
    tap: &mut Tap,
    x: Tensor<B, 3>,
    pad: &Tensor<B, 2, Bool>,
    w: usize,
) -> Tensor<B, 3> {
    let [batch, len, _] = x.dims();
    let heads = mha.heads;
    let w = w.min(len).max(1);
    let blocks = len.div_ceil(w);
    let padded = blocks * w;
    let device = x.device();
    // [batch, len, heads * d_k] -> [batch * heads, blocks, w, d_k], zeros
    // past the end.
    let blocked = |t: Tensor<B, 3>, d_k: usize| {
        let t = match padded - len {
            0 => t,
            extra => Tensor::cat(
                vec![
                    t.clone(),
                    t.zeros_like().slice([0..batch, 0..extra, 0..heads * d_k]),
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
        let d_k = t.dims()[3];
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
    let (qk, dv) = (mha.qk, mha.v);
    let q = blocked(tap.linear("attention.query", &mha.query, x.clone()), qk);
    let k = neighbours(blocked(
        tap.linear("attention.key", &mha.key, x.clone()),
        qk,
    ));
    let v = neighbours(blocked(tap.linear("attention.value", &mha.value, x), dv));
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .div_scalar((mha.scale_dim as f32).sqrt()); // [bh, blocks, w, 3w]
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
    let scores = scores.mask_fill(masked, MIN_FLOAT);
    let weights = burn::tensor::activation::softmax(scores, 3);
    let context = weights.matmul(v); // [bh, blocks, w, dv]
    let context = context
        .reshape([batch, heads, padded, dv])
        .swap_dims(1, 2)
        .slice([0..batch, 0..len, 0..heads, 0..dv])
        .reshape([batch, len, heads * dv]);
    tap.linear("attention.output", &mha.output, context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
    use burn::tensor::{Distribution, TensorData};

    type B = NdArray<f32>;

    fn mha(d: usize, heads: usize) -> MultiHeadAttention<B> {
        B::seed(&Default::default(), 5);
        // Materialised: the copies in `ours` share its values.
        MultiHeadAttentionConfig::new(d, heads)
            .with_dropout(0.0)
            .init(&Default::default())
            .map(&mut crate::train::device::Materialise)
    }

    /// kiln's attention with `m`'s weights.
    fn ours(m: &MultiHeadAttention<B>) -> Attention<B> {
        Attention {
            query: m.query.clone(),
            key: m.key.clone(),
            value: m.value.clone(),
            output: m.output.clone(),
            heads: m.n_heads,
            qk: m.d_k,
            v: m.d_k,
            scale_dim: m.d_k,
        }
    }

    fn pad(batch: usize, len: usize, valid: &[usize]) -> Tensor<B, 2, Bool> {
        let v: Vec<bool> = (0..batch)
            .flat_map(|b| (0..len).map(move |i| i >= valid[b]))
            .collect();
        Tensor::from_data(TensorData::new(v, [batch, len]), &Default::default())
    }

    #[test]
    fn attention_is_burns_multi_head_attention() {
        let m = mha(16, 4);
        let dev = Default::default();
        let x = Tensor::<B, 3>::random([2, 7, 16], Distribution::Normal(0.0, 1.0), &dev);
        let mem = Tensor::<B, 3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &dev);
        let p = pad(2, 7, &[7, 4]);
        let pairs = [
            (
                m.forward(MhaInput::self_attn(x.clone()).mask_pad(p.clone()))
                    .context,
                ours(&m).forward(&mut Tap::plain(), x.clone(), x.clone(), Some(p)),
            ),
            (
                m.forward(MhaInput::new(x.clone(), mem.clone(), mem.clone()))
                    .context,
                ours(&m).forward(&mut Tap::plain(), x, mem, None),
            ),
        ];
        for (a, b) in pairs {
            let (a, b) = (
                a.into_data().to_vec::<f32>().unwrap(),
                b.into_data().to_vec::<f32>().unwrap(),
            );
            assert!(a == b, "the same values, bit for bit");
        }
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
            let s = sliding_attention(&ours(&m), &mut Tap::plain(), x.clone(), &p, w);
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
        let s = sliding_attention(&ours(&m), &mut Tap::plain(), x.clone(), &p, w)
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
