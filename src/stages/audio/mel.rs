//! Mel spectrograms as librosa computes them: `librosa.stft` (periodic
//! window, centred frames padded with zeros or by reflection), power or
//! magnitude, `librosa.filters.mel` (Slaney or HTK mel scale, Slaney area
//! normalisation or none), and optionally `librosa.power_to_db` or
//! `log(x + eps)`. Returned as f32, mel-major (`n_mels` rows of `frames`
//! values), like librosa's arrays; see [`MelPlan`] for the precision of
//! the sums.

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::spectrum::{Kernel, decibels};
pub(crate) use super::spectrum::{hz_to_mel, mel_to_hz};
use super::{Waves, require_wave};
use crate::error::Result;
use crate::stages::columns::{batch_with, keep_ok, schema_with};
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MelLog {
    /// `10 log10(max(amin, x))`, floored at `max - top_db` (librosa's
    /// `power_to_db` with `ref = 1.0`).
    #[default]
    Db,
    /// `ln(x + eps)`.
    Log,
    /// The mel energies as they are.
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MelNorm {
    /// Slaney's area normalisation (librosa's default).
    #[default]
    Slaney,
    None,
}

/// A (log-)mel spectrogram of the decoded waveform, as librosa's
/// `feature.melspectrogram` computes it; the defaults are librosa's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MelSpectrogramConfig {
    #[serde(default = "default_n_fft")]
    pub n_fft: usize,
    /// By default `n_fft / 4`.
    #[serde(default)]
    pub hop_length: Option<usize>,
    /// By default `n_fft`.
    #[serde(default)]
    pub win_length: Option<usize>,
    #[serde(default = "default_window")]
    pub window: Window,
    #[serde(default = "default_true")]
    pub center: bool,
    #[serde(default = "default_pad_mode")]
    pub pad_mode: PadMode,
    #[serde(default = "default_n_mels")]
    pub n_mels: usize,
    #[serde(default)]
    pub fmin: f64,
    /// By default half the sample rate.
    #[serde(default)]
    pub fmax: Option<f64>,
    /// `slaney` (librosa's default) or `htk`.
    #[serde(default = "default_mel_scale")]
    pub scale: MelScale,
    #[serde(default)]
    pub norm: MelNorm,
    /// 2 for power, 1 for magnitude.
    #[serde(default = "default_power")]
    pub power: f64,
    #[serde(default)]
    pub log: MelLog,
    /// `log = "db"`: the floor of the energies.
    #[serde(default = "default_amin")]
    pub amin: f64,
    /// `log = "db"`: the dynamic range kept below the maximum; 0 keeps all.
    #[serde(default = "default_top_db")]
    pub top_db: f64,
    /// `log = "log"`: added before the logarithm.
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn default_n_fft() -> usize {
    2048
}
fn default_window() -> Window {
    Window::Hann
}
fn default_pad_mode() -> PadMode {
    PadMode::Constant
}
fn default_n_mels() -> usize {
    128
}
fn default_mel_scale() -> MelScale {
    MelScale::Slaney
}
fn default_power() -> f64 {
    2.0
}
fn default_amin() -> f64 {
    1e-10
}
fn default_top_db() -> f64 {
    80.0
}
fn default_eps() -> f64 {
    1e-6
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Hann,
    Hamming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MelScale {
    Slaney,
    Htk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    Constant,
    Reflect,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum LogScale {
    /// `10 log10(max(amin, x) / ref)`, floored at `max - top_db`.
    Db { amin: f64, top_db: Option<f64> },
    /// `ln(x + eps)`.
    Log { eps: f64 },
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct MelParams {
    pub sample_rate: u32,
    pub n_fft: usize,
    pub hop_length: usize,
    pub win_length: usize,
    pub window: Window,
    pub center: bool,
    pub pad_mode: PadMode,
    pub n_mels: usize,
    pub fmin: f64,
    pub fmax: f64,
    pub scale: MelScale,
    /// Slaney area normalisation of the filters.
    pub slaney_norm: bool,
    /// 2 for power, 1 for magnitude.
    pub power: f64,
    pub log: Option<LogScale>,
}

/// What a spectrogram needs besides the waveform, computed once.
///
/// The energies are summed in f32 where the result is a dB scale that
/// keeps at most 80 dB below the peak (librosa's default, `top_db = 80`):
/// every cell is then within 0.01 dB of librosa's float64 values (the tests
/// hold it to that), and the FFTs take half the time. Otherwise (no floor,
/// a deeper one, `log` or the energies themselves, where cells far below
/// the peak are kept and f32 rounding would show) they are summed in f64,
/// exact to float32.
pub struct MelPlan {
    params: MelParams,
    kernel: Precision,
}

enum Precision {
    Single(Kernel<f32>),
    Double(Kernel<f64>),
}

/// The deepest dB floor the f32 sums serve.
const SINGLE_TOP_DB: f64 = 80.0;

impl MelPlan {
    pub fn new(p: &MelParams) -> Self {
        let single =
            matches!(p.log, Some(LogScale::Db { top_db: Some(t), .. }) if t <= SINGLE_TOP_DB);
        MelPlan {
            params: p.clone(),
            kernel: match single {
                true => Precision::Single(Kernel::new(p)),
                false => Precision::Double(Kernel::new(p)),
            },
        }
    }

    /// The frames of a clip of `samples` samples.
    pub fn frames(&self, samples: usize) -> usize {
        let p = &self.params;
        let padded = samples + if p.center { 2 * (p.n_fft / 2) } else { 0 };
        if padded >= p.n_fft {
            1 + (padded - p.n_fft) / p.hop_length
        } else {
            0
        }
    }

    /// The values of a clip of `samples` samples: `n_mels` times its frames.
    pub fn len(&self, samples: usize) -> usize {
        self.params.n_mels * self.frames(samples)
    }

    /// The mel spectrogram of `wave` into `out` (mel-major, as long as
    /// [`MelPlan::len`] says); its frame count.
    pub fn compute_into(&self, wave: &[f32], out: &mut [f32]) -> usize {
        let p = &self.params;
        let frames = self.frames(wave.len());
        assert_eq!(out.len(), p.n_mels * frames, "the output fits the clip");
        // `log = "log"`: eps is added to the energies in their precision.
        let add = match p.log {
            Some(LogScale::Log { eps }) => eps,
            _ => 0.0,
        };
        crate::simd::with_avx2(
            #[inline(always)]
            || self.finish(wave, frames, add, out),
        );
        frames
    }

    /// [`MelPlan::compute_into`]'s work: the energies and their scale.
    #[inline(always)]
    fn finish(&self, wave: &[f32], frames: usize, add: f64, out: &mut [f32]) {
        let p = &self.params;
        match &self.kernel {
            Precision::Single(k) => k.energies(p, wave, frames, add, out),
            Precision::Double(k) => k.energies(p, wave, frames, add, out),
        }
        match p.log {
            Some(LogScale::Log { .. }) => out.iter_mut().for_each(|v| *v = v.ln()),
            Some(LogScale::Db { amin, top_db }) => {
                let amin = amin as f32;
                match &self.kernel {
                    // Within a few float32 ulps of 10 log10, which is far
                    // inside the f32 sums' 0.01 dB.
                    Precision::Single(_) if amin >= f32::MIN_POSITIVE => {
                        out.iter_mut().for_each(|v| *v = decibels(v.max(amin)))
                    }
                    _ => out.iter_mut().for_each(|v| *v = 10.0 * v.max(amin).log10()),
                }
                if let Some(top) = top_db {
                    let floor = out.iter().copied().fold(f32::NEG_INFINITY, f32::max) - top as f32;
                    out.iter_mut().for_each(|v| *v = v.max(floor));
                }
            }
            None => {}
        }
    }
}

/// The mel spectrogram of `wave` and its frame count.
pub fn mel_spectrogram(wave: &[f32], p: &MelParams) -> (Vec<f32>, usize) {
    let plan = MelPlan::new(p);
    let mut out = vec![0f32; plan.len(wave.len())];
    let frames = plan.compute_into(wave, &mut out);
    (out, frames)
}

/// `mel_spectrogram`: `mel` and `mel_frames` from the mono waveform.
pub struct MelSpectrogram {
    plan: MelPlan,
}

impl MelSpectrogram {
    /// Checks the parameters against what the decoded audio shares.
    pub fn build(
        cfg: &MelSpectrogramConfig,
        input: &Schema,
    ) -> std::result::Result<Self, (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        let shape =
            require_wave(input, "mel_spectrogram").map_err(|e| ("type".into(), e.to_string()))?;
        let Some(rate) = shape.rate else {
            return err(
                "type",
                "a mel filterbank is for one sample rate: set `sample_rate` on the decode_audio stage".into(),
            );
        };
        if shape.channels != Some(1) {
            return err(
                "type",
                "mel_spectrogram works on one channel: set `mono = true` on the decode_audio stage"
                    .into(),
            );
        }
        if !(2..=1 << 16).contains(&cfg.n_fft) {
            return err("n_fft", "n_fft must be from 2 to 65536".into());
        }
        let hop = cfg.hop_length.unwrap_or(cfg.n_fft / 4);
        if hop == 0 {
            return err("hop_length", "hop_length must be above 0".into());
        }
        let win = cfg.win_length.unwrap_or(cfg.n_fft);
        if win == 0 || win > cfg.n_fft {
            return err("win_length", "win_length must be from 1 to n_fft".into());
        }
        if cfg.n_mels == 0 {
            return err("n_mels", "n_mels must be above 0".into());
        }
        let nyquist = rate as f64 / 2.0;
        let fmax = cfg.fmax.unwrap_or(nyquist);
        if !(cfg.fmin >= 0.0 && cfg.fmin < fmax) {
            return err(
                "fmin",
                format!("fmin must be from 0 to below fmax ({fmax})"),
            );
        }
        if fmax > nyquist {
            return err(
                "fmax",
                format!("fmax is above half the sample rate ({nyquist} Hz)"),
            );
        }
        if !(cfg.power.is_finite() && cfg.power > 0.0) {
            return err(
                "power",
                "power must be above 0 (2 for power, 1 for magnitude)".into(),
            );
        }
        let log = match cfg.log {
            MelLog::None => None,
            MelLog::Log if cfg.eps.is_finite() && cfg.eps > 0.0 => {
                Some(LogScale::Log { eps: cfg.eps })
            }
            MelLog::Log => return err("eps", "eps must be above 0".into()),
            MelLog::Db if cfg.amin.is_finite() && cfg.amin > 0.0 && cfg.top_db >= 0.0 => {
                Some(LogScale::Db {
                    amin: cfg.amin,
                    top_db: (cfg.top_db > 0.0).then_some(cfg.top_db),
                })
            }
            MelLog::Db => return err("amin", "amin must be above 0 and top_db at least 0".into()),
        };
        let params = MelParams {
            sample_rate: rate,
            n_fft: cfg.n_fft,
            hop_length: hop,
            win_length: win,
            window: cfg.window,
            center: cfg.center,
            pad_mode: cfg.pad_mode,
            n_mels: cfg.n_mels,
            fmin: cfg.fmin,
            fmax,
            scale: cfg.scale,
            slaney_norm: cfg.norm == MelNorm::Slaney,
            power: cfg.power,
            log,
        };
        Ok(MelSpectrogram {
            plan: MelPlan::new(&params),
        })
    }
}

impl Stage for MelSpectrogram {
    fn name(&self) -> &str {
        "mel_spectrogram"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        require_wave(input, "mel_spectrogram")?;
        Ok(schema_with(
            input,
            &[],
            &[
                Field::new("mel", super::mel_type(), false),
                Field::new("mel_frames", DataType::UInt32, false),
            ],
        ))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let waves = Waves::of(&batch)?;
        let n_fft = self.plan.params.n_fft;
        // Every row's spectrogram straight into its place in the column's
        // values: a clip's length gives its frames.
        let lengths: Vec<usize> = (0..batch.num_rows())
            .map(|row| self.plan.len(waves.get(row).0.len()))
            .collect();
        let mut values = vec![0f32; lengths.iter().sum()];
        let results: Vec<_> = super::split_mut(&mut values, &lengths)
            .into_par_iter()
            .enumerate()
            .map(|(row, out)| match self.plan.compute_into(waves.get(row).0, out) {
                0 => Err((
                    "too_short",
                    format!("the clip is shorter than n_fft = {n_fft} samples and center = false: no frame"),
                )),
                frames => Ok(frames),
            })
            .collect();
        // A rejected row had no frames, so no values.
        let (batch, frames) = keep_ok(batch, results, cx)?;
        let schema = self.output_schema(&batch.schema())?;
        let mel = super::mel_column(values, self.plan.params.n_mels, &frames);
        let frames = UInt32Array::from_iter_values(frames.iter().map(|&f| f as u32));
        batch_with(
            &batch,
            &schema,
            vec![("mel", mel), ("mel_frames", Arc::new(frames))],
        )
    }
}

impl BuildStage for MelSpectrogramConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        Ok(Built::Ready(Arc::new(MelSpectrogram::build(
            self, cx.input,
        )?)))
    }

    fn is_audio(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Case {
        wave: usize,
        params: MelParams,
        mel: Vec<f32>,
        frames: usize,
    }

    #[derive(Deserialize)]
    struct Reference {
        librosa: String,
        waves: Vec<Vec<f32>>,
        cases: Vec<Case>,
    }

    /// Reference values from librosa (fixtures/audio/make_mel_reference.py):
    /// energies and logarithms within 1e-4 relative, dB scales within
    /// 0.01 dB in every cell.
    #[test]
    fn mel_spectrograms_match_librosa() {
        let r: Reference =
            serde_json::from_str(include_str!("../../../fixtures/audio/mel_reference.json"))
                .unwrap();
        for (i, case) in r.cases.iter().enumerate() {
            let (mel, frames) = mel_spectrogram(&r.waves[case.wave], &case.params);
            assert_eq!(frames, case.frames, "case {i}");
            assert_eq!(mel.len(), case.mel.len(), "case {i}");
            let (worst, limit) = match case.params.log {
                Some(LogScale::Db { .. }) => (
                    mel.iter()
                        .zip(&case.mel)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max),
                    0.01,
                ),
                _ => {
                    let scale = case.mel.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let worst = mel
                        .iter()
                        .zip(&case.mel)
                        .map(|(a, b)| (a - b).abs() / b.abs().max(scale * 1e-6))
                        .fold(0f32, f32::max);
                    (worst, 1e-4)
                }
            };
            eprintln!("case {i}: max error {worst:e} (limit {limit:e})");
            assert!(
                worst <= limit,
                "case {i} ({:?}): max error {worst} against librosa {}",
                case.params,
                r.librosa
            );
        }
    }
}
