//! Mel spectrograms as librosa computes them: `librosa.stft` (periodic
//! window, centred frames padded with zeros or by reflection), power or
//! magnitude, `librosa.filters.mel` (Slaney or HTK mel scale, Slaney area
//! normalisation or none), and optionally `librosa.power_to_db` or
//! `log(x + eps)`. Computed in f64, returned as f32, mel-major
//! (`n_mels` rows of `frames` values), like librosa's arrays.

use std::f64::consts::PI;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

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

pub(crate) fn hz_to_mel(f: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + f / 700.0).log10(),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            let min_log_hz = 1000.0;
            let min_log_mel = min_log_hz / f_sp;
            let logstep = 6.4f64.ln() / 27.0;
            if f >= min_log_hz {
                min_log_mel + (f / min_log_hz).ln() / logstep
            } else {
                f / f_sp
            }
        }
    }
}

pub(crate) fn mel_to_hz(m: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(m / 2595.0) - 1.0),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            let min_log_hz = 1000.0;
            let min_log_mel = min_log_hz / f_sp;
            let logstep = 6.4f64.ln() / 27.0;
            if m >= min_log_mel {
                min_log_hz * (logstep * (m - min_log_mel)).exp()
            } else {
                f_sp * m
            }
        }
    }
}

/// The filterbank, `n_mels` rows of `n_fft / 2 + 1` weights.
pub fn filterbank(p: &MelParams) -> Vec<Vec<f64>> {
    let bins = p.n_fft / 2 + 1;
    let sr = p.sample_rate as f64;
    let fft_freqs: Vec<f64> = (0..bins).map(|i| i as f64 * sr / p.n_fft as f64).collect();
    let (lo, hi) = (hz_to_mel(p.fmin, p.scale), hz_to_mel(p.fmax, p.scale));
    let n = p.n_mels + 2;
    let mel_f: Vec<f64> = (0..n)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n - 1) as f64, p.scale))
        .collect();
    (0..p.n_mels)
        .map(|i| {
            let (d0, d1) = (mel_f[i + 1] - mel_f[i], mel_f[i + 2] - mel_f[i + 1]);
            let norm = if p.slaney_norm {
                2.0 / (mel_f[i + 2] - mel_f[i])
            } else {
                1.0
            };
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = -(mel_f[i] - f) / d0;
                    let upper = (mel_f[i + 2] - f) / d1;
                    lower.min(upper).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

fn window(p: &MelParams) -> Vec<f64> {
    let n = p.win_length.min(p.n_fft).max(1);
    let w: Vec<f64> = (0..n)
        .map(|i| {
            let x = 2.0 * PI * i as f64 / n as f64;
            match p.window {
                Window::Hann => 0.5 - 0.5 * x.cos(),
                Window::Hamming => 0.54 - 0.46 * x.cos(),
            }
        })
        .collect();
    // Centred in n_fft, as librosa's pad_center.
    let mut out = vec![0.0; p.n_fft];
    let left = (p.n_fft - n) / 2;
    out[left..left + n].copy_from_slice(&w);
    out
}

/// What a spectrogram needs besides the waveform, computed once: the
/// window, the FFT plan, and each filter's non-zero weights.
pub struct MelPlan {
    params: MelParams,
    window: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
    /// Per mel band: the first FFT bin with a weight, and the weights.
    filters: Vec<(usize, Vec<f64>)>,
}

impl MelPlan {
    pub fn new(p: &MelParams) -> Self {
        let filters = filterbank(p)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
                (first, row[first..last.max(first)].to_vec())
            })
            .collect();
        MelPlan {
            params: p.clone(),
            window: window(p),
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(p.n_fft),
            filters,
        }
    }

    /// The mel spectrogram of `wave` (mel-major) and its frame count.
    pub fn compute(&self, wave: &[f32]) -> (Vec<f32>, usize) {
        let p = &self.params;
        let half = p.n_fft / 2;
        let mut y: Vec<f64> = wave.iter().map(|&v| v as f64).collect();
        if p.center {
            let n = y.len();
            let pad = |i: isize| -> f64 {
                match p.pad_mode {
                    PadMode::Constant => 0.0,
                    PadMode::Reflect if n > 1 => {
                        // Reflect without repeating the edge sample.
                        let period = 2 * (n as isize - 1);
                        let mut j = i.rem_euclid(period);
                        if j >= n as isize {
                            j = period - j;
                        }
                        y[j as usize]
                    }
                    // numpy repeats a single sample; nothing to reflect
                    // in an empty clip.
                    PadMode::Reflect if n == 1 => y[0],
                    PadMode::Reflect => 0.0,
                }
            };
            let mut padded = Vec::with_capacity(n + 2 * half);
            padded.extend((0..half).map(|k| pad(k as isize - half as isize)));
            padded.extend_from_slice(&y);
            padded.extend((0..half).map(|k| pad((n + k) as isize)));
            y = padded;
        }
        let frames = if y.len() >= p.n_fft {
            1 + (y.len() - p.n_fft) / p.hop_length
        } else {
            0
        };
        let bins = half + 1;
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut mel = vec![0f64; p.n_mels * frames];
        let mut power = vec![0f64; bins];
        for t in 0..frames {
            let start = t * p.hop_length;
            for ((v, &x), &w) in input.iter_mut().zip(&y[start..]).zip(&self.window) {
                *v = x * w;
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .expect("sizes match the plan");
            for (s, c) in power.iter_mut().zip(&spectrum) {
                let sq = c.norm_sqr();
                *s = if p.power == 2.0 {
                    sq
                } else if p.power == 1.0 {
                    sq.sqrt()
                } else {
                    sq.sqrt().powf(p.power)
                };
            }
            for (m, (first, weights)) in self.filters.iter().enumerate() {
                mel[m * frames + t] = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, s)| w * s)
                    .sum();
            }
        }
        // The energies are exact to f64; their logarithm in f32 is within
        // 1e-6 dB of it, and several times faster.
        let mut out: Vec<f32> = match p.log {
            Some(LogScale::Log { eps }) => mel.iter().map(|&v| ((v + eps) as f32).ln()).collect(),
            _ => mel.iter().map(|&v| v as f32).collect(),
        };
        if let Some(LogScale::Db { amin, top_db }) = p.log {
            let amin = amin as f32;
            out.iter_mut().for_each(|v| *v = 10.0 * v.max(amin).log10());
            if let Some(top) = top_db {
                let floor = out.iter().copied().fold(f32::NEG_INFINITY, f32::max) - top as f32;
                out.iter_mut().for_each(|v| *v = v.max(floor));
            }
        }
        (out, frames)
    }
}

/// The mel spectrogram of `wave` and its frame count.
pub fn mel_spectrogram(wave: &[f32], p: &MelParams) -> (Vec<f32>, usize) {
    MelPlan::new(p).compute(wave)
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
        let results: Vec<_> = (0..batch.num_rows())
            .into_par_iter()
            .map(|row| match self.plan.compute(waves.get(row).0) {
                (_, 0) => Err((
                    "too_short",
                    format!("the clip is shorter than n_fft = {n_fft} samples and center = false: no frame"),
                )),
                mel => Ok(mel),
            })
            .collect();
        let (batch, mels) = keep_ok(batch, results, cx)?;
        let schema = self.output_schema(&batch.schema())?;
        let frames = UInt32Array::from_iter_values(mels.iter().map(|(_, f)| *f as u32));
        let mel = super::mel_lists(mels.iter().map(|(m, f)| (m.as_slice(), *f)));
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
        params: MelParams,
        mel: Vec<f32>,
        frames: usize,
    }

    #[derive(Deserialize)]
    struct Reference {
        librosa: String,
        wave: Vec<f32>,
        cases: Vec<Case>,
    }

    /// Reference values from librosa (fixtures/audio/make_mel_reference.py).
    #[test]
    fn mel_spectrograms_match_librosa() {
        let r: Reference =
            serde_json::from_str(include_str!("../../../fixtures/audio/mel_reference.json"))
                .unwrap();
        for (i, case) in r.cases.iter().enumerate() {
            let (mel, frames) = mel_spectrogram(&r.wave, &case.params);
            assert_eq!(frames, case.frames, "case {i}");
            assert_eq!(mel.len(), case.mel.len(), "case {i}");
            let scale = case.mel.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = mel
                .iter()
                .zip(&case.mel)
                .map(|(a, b)| (a - b).abs() / b.abs().max(scale * 1e-6))
                .fold(0f32, f32::max);
            eprintln!("case {i}: max relative error {worst:e}");
            assert!(
                worst <= 1e-4,
                "case {i} ({:?}): max relative error {worst} against librosa {}",
                case.params,
                r.librosa
            );
        }
    }
}
