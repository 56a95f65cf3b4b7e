//! Batches as the model takes them: Arrow columns to tensors, the targets,
//! and the online mixing of `pixel_values`. (The loader keeps training and
//! held-out rows apart: [`super::loader::Holdout`].)
//!
//! `[mix]` mixes `pixel_values` online, per micro-batch, as timm's `Mixup`
//! does: row i with row `n - 1 - i` (the batch flipped), one mixing per
//! batch (`mode = "batch"`) or per row (`"elem"`), drawn with the offline
//! `mix` stage's rules from a generator seeded by (seed, loader position),
//! so a resumed run mixes the same way. The targets become the smoothed
//! `onehot(y) * lam + onehot(y_partner) * (1 - lam)` and the loss the
//! cross-entropy against them.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, UInt32Type};
use burn::nn::loss::CrossEntropyLoss;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{MixMode, TrainMix};
use super::loader::Position;
use super::model::{Dims, Inputs};
use super::shape::Columns;
use crate::error::{Error, Result};

/// A task's targets: class ids, or (mixed) class weights `[batch, classes]`.
pub(super) enum Target<B: Backend> {
    Hard(Tensor<B, 1, Int>),
    Soft(Tensor<B, 2>),
}

impl<B: Backend> Target<B> {
    pub(super) fn rows(&self) -> usize {
        match self {
            Target::Hard(t) => t.dims()[0],
            Target::Soft(t) => t.dims()[0],
        }
    }

    pub(super) fn hard(self) -> Result<Tensor<B, 1, Int>> {
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
pub(super) fn task_loss<B: Backend>(
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
pub(super) type Batch<B> = (Inputs<B>, Vec<Target<B>>);

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
    use crate::mixing::{Mixing, draw_mixing};
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

/// The generator of a batch's mixing: a function of the seed, the
/// loader's position before the batch and the rank, so a resumed run draws
/// the same and data-parallel ranks draw their own.
pub(super) fn mix_rng(seed: u64, at: Position, rank: usize) -> ChaCha8Rng {
    let mut key = Vec::with_capacity(36);
    key.extend_from_slice(b"mix:");
    key.extend_from_slice(&seed.to_le_bytes());
    key.extend_from_slice(&at.epoch.to_le_bytes());
    key.extend_from_slice(&at.rows.to_le_bytes());
    // Ranks stand at the same positions: each draws its own mixings.
    if rank > 0 {
        key.extend_from_slice(&(rank as u64).to_le_bytes());
    }
    let d = ring::digest::digest(&ring::digest::SHA256, &key);
    ChaCha8Rng::from_seed(d.as_ref().try_into().expect("32 bytes"))
}

/// A batch's tensors and labels; rows with a non-finite feature are left
/// out and counted.
pub(super) fn tensors<B: Backend>(
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
                    t.extend(crate::mixing::mixed_target(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixing::mixed_target;

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
}
