//! SpecAugment (Park et al. 2019) on a log-mel spectrogram, mel-major
//! (`n_mels` rows of `frames` values): time warping, then `mF` frequency
//! masks of width `f ~ U[0, F]`, then `mT` time masks of width
//! `t ~ U[0, min(T, floor(p * frames))]`; masked cells take the mask value
//! (zero, or the spectrogram's mean after warping). Every draw comes from
//! the generator it is given, and what was drawn is returned.
//!
//! Time warping: an anchor `a ~ U(W, frames - W)` (integers strictly
//! inside) moves to `a + w`, `w ~ U[-W, W]`; each side is stretched
//! linearly (output frame `a + w` is input frame `a`, the ends stay), and
//! values between input frames are interpolated linearly.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int32Array, ListArray, RecordBatch,
    StringArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{CHANNELS, WAVE};

/// The waveform `encode_audio` stores.
const AUDIO: &str = "audio";
use crate::error::{Error, Result};
use crate::stages::columns::{batch_with, fixed_list_type, schema_with};
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};

/// SpecAugment copies of the mel spectrogram (Park et al. 2019): a policy's
/// parameters, each overridable.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpecAugmentConfig {
    /// `LB`, `LD`, `SM` or `SS`; by default `LB`.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// W: the largest time shift of the warp anchor, in frames; 0 turns
    /// warping off.
    #[serde(default)]
    pub time_warp: Option<u32>,
    /// F: the widest frequency mask, in mel bins.
    #[serde(default)]
    pub freq_mask: Option<u32>,
    /// mF: frequency masks per copy.
    #[serde(default)]
    pub freq_masks: Option<u32>,
    /// T: the widest time mask, in frames.
    #[serde(default)]
    pub time_mask: Option<u32>,
    /// p: a time mask is at most this fraction of the frames.
    #[serde(default)]
    pub time_mask_ratio: Option<f64>,
    /// mT: time masks per copy.
    #[serde(default)]
    pub time_masks: Option<u32>,
    /// `zero` or `mean` (of the spectrogram after warping).
    #[serde(default)]
    pub mask_value: Option<MaskValue>,
    /// Augmented copies per sample, written after the sample itself.
    #[serde(default = "default_copies")]
    pub copies: u32,
}

fn default_copies() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskValue {
    Zero,
    Mean,
}

/// `W, F, mF, T, p, mT` and the mask value.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct SpecAugmentParams {
    pub time_warp: u32,
    pub freq_mask: u32,
    pub freq_masks: u32,
    pub time_mask: u32,
    pub time_mask_ratio: f64,
    pub time_masks: u32,
    pub mask_value: MaskValue,
}

/// The paper's policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Policy {
    LB,
    LD,
    SM,
    SS,
}

impl Policy {
    pub fn params(self) -> SpecAugmentParams {
        let (w, f, mf, t, p, mt) = match self {
            Policy::LB => (80, 27, 1, 100, 1.0, 1),
            Policy::LD => (80, 27, 2, 100, 1.0, 2),
            Policy::SM => (40, 15, 2, 70, 0.2, 2),
            Policy::SS => (40, 27, 2, 70, 0.2, 2),
        };
        SpecAugmentParams {
            time_warp: w,
            freq_mask: f,
            freq_masks: mf,
            time_mask: t,
            time_mask_ratio: p,
            time_masks: mt,
            mask_value: MaskValue::Zero,
        }
    }
}

/// What one application drew.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Applied {
    /// `(anchor, w)`: input frame `anchor` moved to `anchor + w`.
    pub warp: Option<(u32, i32)>,
    /// `(first mel bin, width)` of each frequency mask.
    pub freq: Vec<(u32, u32)>,
    /// `(first frame, width)` of each time mask.
    pub time: Vec<(u32, u32)>,
    pub mask_value: f32,
}

/// Warp `mel` in time into `out` (as long as `mel`): input frame `a` goes
/// to `a2`, the ends stay.
#[inline(always)]
fn time_warp_into(mel: &[f32], out: &mut [f32], n_mels: usize, frames: usize, a: usize, a2: usize) {
    let last = (frames - 1) as f64;
    // Where each output frame reads: the frames on either side and the
    // share of the later one.
    let taps: Vec<(usize, usize, f32)> = (0..frames)
        .map(|t| {
            let t = t as f64;
            let src = if t <= a2 as f64 {
                if a2 == 0 {
                    0.0
                } else {
                    t * a as f64 / a2 as f64
                }
            } else {
                a as f64 + (t - a2 as f64) * (last - a as f64) / (last - a2 as f64)
            };
            let i0 = src.floor() as usize;
            (i0, (i0 + 1).min(frames - 1), (src - i0 as f64) as f32)
        })
        .collect();
    for m in 0..n_mels {
        let row = &mel[m * frames..(m + 1) * frames];
        let dst = &mut out[m * frames..(m + 1) * frames];
        for (d, &(i0, i1, frac)) in dst.iter_mut().zip(&taps) {
            *d = row[i0] + (row[i1] - row[i0]) * frac;
        }
    }
}

/// SpecAugment of `src` written to `mel` (as long as `src`).
#[inline(always)]
pub fn apply(
    src: &[f32],
    mel: &mut [f32],
    n_mels: usize,
    frames: usize,
    p: &SpecAugmentParams,
    rng: &mut impl Rng,
) -> Applied {
    let mut done = Applied::default();
    let w = p.time_warp as usize;
    if w > 0 && frames > 2 * w + 1 {
        let a = rng.random_range(w + 1..frames - w);
        let shift = rng.random_range(-(w as i64)..=w as i64);
        let a2 = (a as i64 + shift) as usize;
        time_warp_into(src, mel, n_mels, frames, a, a2);
        done.warp = Some((a as u32, shift as i32));
    } else {
        mel.copy_from_slice(src);
    }
    let value = match p.mask_value {
        MaskValue::Zero => 0.0,
        MaskValue::Mean if mel.is_empty() => 0.0,
        MaskValue::Mean => (mel.iter().map(|&v| v as f64).sum::<f64>() / mel.len() as f64) as f32,
    };
    done.mask_value = value;
    for _ in 0..p.freq_masks {
        let f = rng.random_range(0..=p.freq_mask as usize).min(n_mels);
        let f0 = rng.random_range(0..=n_mels - f);
        for m in f0..f0 + f {
            mel[m * frames..(m + 1) * frames].fill(value);
        }
        done.freq.push((f0 as u32, f as u32));
    }
    let cap = ((p.time_mask_ratio * frames as f64).floor() as usize).min(p.time_mask as usize);
    for _ in 0..p.time_masks {
        let t = rng.random_range(0..=cap).min(frames);
        let t0 = rng.random_range(0..=frames - t);
        for m in 0..n_mels {
            mel[m * frames + t0..m * frames + t0 + t].fill(value);
        }
        done.time.push((t0 as u32, t as u32));
    }
    done
}

/// `spec_augment`: every sample as itself (`augment = 0`), then `copies`
/// augmented copies (`augment = K`, sample id `ID#specaugK`), each drawn
/// from a generator seeded by (run seed, `ID#specaugK`, stage), with what
/// was drawn in `warp_anchor`, `warp_shift`, `freq_masks`, `time_masks` and
/// `mask_value`. The working waveform is dropped (`encode_audio` goes
/// before), and a stored one (`audio`) stays on the original row only: a
/// copy's is null.
pub struct SpecAugment {
    params: SpecAugmentParams,
    copies: u32,
}

impl SpecAugment {
    pub fn build(cfg: &SpecAugmentConfig) -> std::result::Result<Self, (String, String)> {
        let mut p = cfg.policy.unwrap_or(Policy::LB).params();
        let set = |v: Option<u32>, into: &mut u32| {
            if let Some(v) = v {
                *into = v;
            }
        };
        set(cfg.time_warp, &mut p.time_warp);
        set(cfg.freq_mask, &mut p.freq_mask);
        set(cfg.freq_masks, &mut p.freq_masks);
        set(cfg.time_mask, &mut p.time_mask);
        set(cfg.time_masks, &mut p.time_masks);
        if let Some(r) = cfg.time_mask_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err((
                    "time_mask_ratio".into(),
                    "time_mask_ratio (p) must be from 0 to 1".into(),
                ));
            }
            p.time_mask_ratio = r;
        }
        if let Some(v) = cfg.mask_value {
            p.mask_value = v;
        }
        if cfg.copies == 0 {
            return Err((
                "copies".into(),
                "copies must be at least 1 (leave the stage out for none)".into(),
            ));
        }
        Ok(SpecAugment {
            params: p,
            copies: cfg.copies,
        })
    }
}

/// The item of `freq_masks` and `time_masks`: `[first, width]`.
fn pair_field() -> Arc<Field> {
    Arc::new(Field::new(
        "item",
        fixed_list_type(DataType::UInt32, 2),
        true,
    ))
}

fn pairs_type() -> DataType {
    DataType::List(pair_field())
}

/// A `list<fixed_list<uint32, 2>>` column.
fn pairs_column(rows: &[&[(u32, u32)]]) -> Result<ArrayRef> {
    let values: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.iter().flat_map(|&(a, b)| [a, b]))
        .collect();
    let pairs = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::UInt32, true)),
        2,
        Arc::new(UInt32Array::from(values)),
        None,
    )?;
    Ok(Arc::new(ListArray::try_new(
        pair_field(),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.len())),
        Arc::new(pairs),
        None,
    )?))
}

impl Stage for SpecAugment {
    fn name(&self) -> &str {
        "spec_augment"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let spectrogram = input
            .field_with_name("mel")
            .is_ok_and(|f| f.data_type() == &super::mel_type())
            && input.field_with_name("mel_frames").is_ok();
        if !spectrogram {
            return Err(Error::Config(
                "spec_augment works on `mel`: put a `mel_spectrogram` stage before it".into(),
            ));
        }
        // A copy's waveform is its original's: `audio` (from an
        // `encode_audio` before) is null in the copies, in its place.
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .map(|f| match f.name() == AUDIO && self.copies > 0 {
                true => f.as_ref().clone().with_nullable(true),
                false => f.as_ref().clone(),
            })
            .collect();
        let input = Schema::new_with_metadata(fields, input.metadata().clone());
        Ok(schema_with(
            &input,
            &[WAVE, CHANNELS],
            &[
                Field::new("augment", DataType::UInt32, false),
                Field::new("warp_anchor", DataType::UInt32, true),
                Field::new("warp_shift", DataType::Int32, true),
                Field::new("freq_masks", pairs_type(), false),
                Field::new("time_masks", pairs_type(), false),
                Field::new("mask_value", DataType::Float32, true),
            ],
        ))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("spec_augment: no `{name}` column")))
        };
        let ids = col("sample_id")?.as_string::<i32>().clone();
        let mel = col("mel")?.as_list::<i32>().clone();
        let frames = col("mel_frames")?.as_primitive::<UInt32Type>().clone();
        let mels = super::Mels::of(&mel, &frames);
        let per = self.copies as usize + 1;
        let rows = batch.num_rows();
        let copy_ids: Vec<String> = (0..rows)
            .flat_map(|r| {
                let id = ids.value(r);
                (0..per).map(move |k| match k {
                    0 => id.to_string(),
                    k => format!("{id}#specaug{k}"),
                })
            })
            .collect();
        let seeds: Vec<u64> = copy_ids.iter().map(|id| cx.sample_seed(id)).collect();
        // Every output row straight into its place in the new column's
        // values: the original, then its copies. Per row: what was drawn.
        let lengths: Vec<usize> = (0..rows * per).map(|i| mels.get(i / per).0.len()).collect();
        let mut values = vec![0f32; lengths.iter().sum()];
        let out: Vec<(usize, Option<Applied>)> = super::split_mut(&mut values, &lengths)
            .into_par_iter()
            .enumerate()
            .map(|(i, dst)| {
                let (row, k) = (i / per, i % per);
                let (src, t) = mels.get(row);
                if k == 0 {
                    dst.copy_from_slice(src);
                    return (t, None);
                }
                let n_mels = src.len().checked_div(t).unwrap_or(0);
                let mut rng = ChaCha8Rng::seed_from_u64(seeds[i]);
                let done = crate::simd::with_avx2(
                    #[inline(always)]
                    || apply(src, dst, n_mels, t, &self.params, &mut rng),
                );
                (t, Some(done))
            })
            .collect();
        let n_mels = (0..rows)
            .map(|r| mels.get(r))
            .find(|(v, t)| *t > 0 && !v.is_empty())
            .map_or(0, |(v, t)| v.len() / t);
        let schema = self.output_schema(&batch.schema())?;
        let take = UInt32Array::from_iter_values((0..rows * per).map(|i| (i / per) as u32));
        let mut rest = batch.clone();
        // The columns made anew below are not taken.
        for name in [WAVE, CHANNELS, "mel", AUDIO] {
            if let Ok(i) = rest.schema().index_of(name) {
                rest.remove_column(i);
            }
        }
        let taken = arrow::compute::take_record_batch(&rest, &take)?;
        // The waveform on the original row only: a null index takes a null.
        let audio = match batch.column_by_name(AUDIO) {
            Some(a) => {
                let originals = UInt32Array::from_iter(
                    (0..rows * per).map(|i| (i % per == 0).then_some((i / per) as u32)),
                );
                Some(arrow::compute::take(a, &originals, None)?)
            }
            None => None,
        };
        let empty: &[(u32, u32)] = &[];
        let freq: Vec<&[(u32, u32)]> = out
            .iter()
            .map(|(_, a)| a.as_ref().map_or(empty, |a| a.freq.as_slice()))
            .collect();
        let time: Vec<&[(u32, u32)]> = out
            .iter()
            .map(|(_, a)| a.as_ref().map_or(empty, |a| a.time.as_slice()))
            .collect();
        let applied = || out.iter().map(|(_, a)| a.as_ref());
        let frames: Vec<usize> = out.iter().map(|(t, _)| *t).collect();
        let mut added: Vec<(&str, ArrayRef)> = vec![
            ("sample_id", Arc::new(StringArray::from(copy_ids))),
            (
                "augment",
                Arc::new(UInt32Array::from_iter_values(
                    (0..rows * per).map(|i| (i % per) as u32),
                )),
            ),
            ("mel", super::mel_column(values, n_mels, &frames)),
            (
                "warp_anchor",
                Arc::new(UInt32Array::from_iter(
                    applied().map(|a| a.and_then(|a| a.warp).map(|w| w.0)),
                )),
            ),
            (
                "warp_shift",
                Arc::new(Int32Array::from_iter(
                    applied().map(|a| a.and_then(|a| a.warp).map(|w| w.1)),
                )),
            ),
            ("freq_masks", pairs_column(&freq)?),
            ("time_masks", pairs_column(&time)?),
            (
                "mask_value",
                Arc::new(Float32Array::from_iter(
                    applied().map(|a| a.map(|a| a.mask_value)),
                )),
            ),
        ];
        added.extend(audio.map(|a| (AUDIO, a)));
        batch_with(&taken, &schema, added)
    }
}

impl BuildStage for SpecAugmentConfig {
    fn build(&self, _cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        Ok(Built::Ready(Arc::new(SpecAugment::build(self)?)))
    }

    fn is_audio(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(n_mels: usize, frames: usize) -> Vec<f32> {
        (0..n_mels * frames)
            .map(|i| 1.0 + (i % frames) as f32 + 1000.0 * (i / frames) as f32)
            .collect()
    }

    #[test]
    fn masks_stay_within_bounds_and_hold_the_mask_value() {
        let (n_mels, frames) = (80, 300);
        for seed in 0..200 {
            for policy in [Policy::LB, Policy::LD, Policy::SM, Policy::SS] {
                let p = policy.params();
                let mut mel = ramp(n_mels, frames);
                let done = apply(
                    &ramp(n_mels, frames),
                    &mut mel,
                    n_mels,
                    frames,
                    &p,
                    &mut ChaCha8Rng::seed_from_u64(seed),
                );
                assert_eq!(mel.len(), n_mels * frames, "the shape is kept");
                assert_eq!(done.freq.len(), p.freq_masks as usize);
                assert_eq!(done.time.len(), p.time_masks as usize);
                for &(f0, f) in &done.freq {
                    assert!(f <= p.freq_mask && f0 + f <= n_mels as u32);
                    for m in f0..f0 + f {
                        let row = &mel[m as usize * frames..(m as usize + 1) * frames];
                        assert!(row.iter().all(|&v| v == 0.0));
                    }
                }
                let cap = ((p.time_mask_ratio * frames as f64) as u32).min(p.time_mask);
                for &(t0, t) in &done.time {
                    assert!(t <= cap && t0 + t <= frames as u32);
                    for m in 0..n_mels {
                        assert!((t0..t0 + t).all(|x| mel[m * frames + x as usize] == 0.0));
                    }
                }
                if let Some((a, w)) = done.warp {
                    assert!(a > p.time_warp && (a as usize) < frames - p.time_warp as usize);
                    assert!(w.unsigned_abs() <= p.time_warp);
                }
            }
        }
    }

    #[test]
    fn warp_moves_the_anchor_and_keeps_the_ends() {
        let (n_mels, frames) = (3, 50);
        let mel = ramp(n_mels, frames);
        let mut out = vec![0f32; mel.len()];
        time_warp_into(&mel, &mut out, n_mels, frames, 20, 27);
        for m in 0..n_mels {
            let (src, dst) = (
                &mel[m * frames..(m + 1) * frames],
                &out[m * frames..(m + 1) * frames],
            );
            assert_eq!(dst[27], src[20], "output frame a + w is input frame a");
            assert_eq!(dst[0], src[0]);
            assert_eq!(dst[frames - 1], src[frames - 1]);
            // The ramp stays increasing: a stretch, not a shuffle.
            assert!(dst.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn same_seed_same_output_and_mean_masks() {
        let (n_mels, frames) = (40, 120);
        let mut p = Policy::SS.params();
        p.mask_value = MaskValue::Mean;
        let run = |seed| {
            let mut mel = ramp(n_mels, frames);
            let done = apply(
                &ramp(n_mels, frames),
                &mut mel,
                n_mels,
                frames,
                &p,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            (mel, done)
        };
        let (a, da) = run(7);
        let (b, db) = run(7);
        assert_eq!(a, b);
        assert_eq!(da, db);
        let (c, _) = run(8);
        assert_ne!(a, c);
        assert!(da.mask_value > 0.0, "the mean of a positive spectrogram");
    }
}
