//! The arithmetic of [`super::mel`]: the mel scales, librosa's filterbank
//! and windows, the STFT and filterbank sums in f32 or f64 ([`Kernel`]),
//! and a vectorisable dB scale.

use std::f64::consts::PI;
use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use super::mel::{MelParams, MelScale, PadMode, Window};

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

pub(super) fn window(p: &MelParams) -> Vec<f64> {
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

/// The precision a float type brings to the spectrogram's sums.
pub(super) trait Real: realfft::FftNum + realfft::num_traits::Float {
    fn of(v: f64) -> Self;
    fn f32(self) -> f32;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f32(self) -> f32 {
        self
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn f32(self) -> f32 {
        self as f32
    }
}

/// The window, the FFT plan and each filter's non-zero weights, in `T`.
pub(super) struct Kernel<T: Real> {
    window: Vec<T>,
    fft: Arc<dyn RealToComplex<T>>,
    /// Per mel band: the first FFT bin with a weight, and the weights.
    filters: Vec<(usize, Vec<T>)>,
}

impl<T: Real> Kernel<T> {
    pub(super) fn new(p: &MelParams) -> Self {
        let filters = filterbank(p)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
                let weights = row[first..last.max(first)].iter().map(|&w| T::of(w));
                (first, weights.collect())
            })
            .collect();
        Kernel {
            window: window(p).into_iter().map(T::of).collect(),
            fft: RealFftPlanner::<T>::new().plan_fft_forward(p.n_fft),
            filters,
        }
    }

    /// The mel energies of the frames of `wave`, plus `add`, into `out`
    /// (mel-major, `frames` a band), as f32.
    #[inline(always)]
    pub(super) fn energies(
        &self,
        p: &MelParams,
        wave: &[f32],
        frames: usize,
        add: f64,
        out: &mut [f32],
    ) {
        let half = p.n_fft / 2;
        let mut y: Vec<T> = Vec::with_capacity(wave.len() + 2 * half);
        if p.center {
            let n = wave.len();
            let pad = |i: isize| -> T {
                T::of(match p.pad_mode {
                    PadMode::Constant => 0.0,
                    PadMode::Reflect if n > 1 => {
                        // Reflect without repeating the edge sample.
                        let period = 2 * (n as isize - 1);
                        let mut j = i.rem_euclid(period);
                        if j >= n as isize {
                            j = period - j;
                        }
                        wave[j as usize] as f64
                    }
                    // numpy repeats a single sample; nothing to reflect
                    // in an empty clip.
                    PadMode::Reflect if n == 1 => wave[0] as f64,
                    PadMode::Reflect => 0.0,
                })
            };
            y.extend((0..half).map(|k| pad(k as isize - half as isize)));
            y.extend(wave.iter().map(|&v| T::of(v as f64)));
            y.extend((0..half).map(|k| pad((n + k) as isize)));
        } else {
            y.extend(wave.iter().map(|&v| T::of(v as f64)));
        }
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![T::zero(); half + 1];
        let exponent = T::of(p.power);
        let add = T::of(add);
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
                    sq.sqrt().powf(exponent)
                };
            }
            for (m, (first, weights)) in self.filters.iter().enumerate() {
                let e = weights
                    .iter()
                    .zip(&power[*first..])
                    .fold(T::zero(), |acc, (&w, &s)| acc + w * s);
                out[m * frames + t] = (e + add).f32();
            }
        }
    }
}

/// `10 log10(x)` of a positive normal float in float32 arithmetic without
/// a call, so a loop of it is vectorised: `x = m 2^e` with `m` within
/// [1/sqrt 2, sqrt 2), `ln m = 2 atanh(s)`, `s = (m - 1) / (m + 1)`, by its
/// series to s^9 (|s| < 0.172, so the next term is under 4e-10). NaN and
/// infinities are returned as they are.
#[inline(always)]
pub(super) fn decibels(x: f32) -> f32 {
    const DB_PER_LN: f32 = 10.0 / std::f32::consts::LN_10;
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
    let ln = e as f32 * std::f32::consts::LN_2 + 2.0 * s * series;
    if x.is_finite() { ln * DB_PER_LN } else { x }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decibels_are_10_log10() {
        let mut worst = 0f64;
        let mut x = f32::MIN_POSITIVE;
        while x < f32::MAX / 1.001 {
            let exact = 10.0 * (x as f64).log10();
            worst = worst.max((decibels(x) as f64 - exact).abs() / exact.abs().max(1.0));
            x *= 1.0007;
        }
        assert!(worst < 2e-6, "{worst}");
        assert_eq!(decibels(1.0), 0.0);
        assert!(decibels(f32::NAN).is_nan());
        assert_eq!(decibels(f32::INFINITY), f32::INFINITY);
    }
}
