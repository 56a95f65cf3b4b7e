//! Band-limited resampling (rubato's synchronous FFT resampler, which
//! filters above the lower Nyquist frequency before changing the rate).
//!
//! The FFT blocks are sized to an even number of the rates' smallest
//! blocks: rubato trims a delay of half a block, which is exact only for
//! even block sizes. With an odd one (22050 or 44100 Hz to 16 kHz with its
//! default sizes) every output would come half an input sample early.

use rubato::audioadapter::Adapter;
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use super::audio::Audio;
use crate::rejects::Rejection;

thread_local! {
    static RESAMPLERS: RefCell<HashMap<(usize, usize, usize), Fft<f32>>> =
        RefCell::new(HashMap::new());
}

/// Input frames of an FFT block: about 1024, an even multiple of the
/// smallest block `from / gcd(from, to)`.
fn block_frames(from: usize, to: usize) -> usize {
    let (mut a, mut b) = (from, to);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    let smallest = from / a;
    let blocks = 1024usize.div_ceil(smallest).max(1);
    (blocks + blocks % 2) * smallest
}

/// `audio` at `rate` Hz; unchanged when it is already.
pub fn resample(audio: Audio, rate: u32) -> Result<Audio, Rejection> {
    if audio.rate == rate || audio.samples.is_empty() {
        return Ok(audio);
    }
    let channels = audio.channels.max(1);
    let frames = audio.frames();
    let fail = |e: String| ("resample_failed", e);
    let (from, to) = (audio.rate as usize, rate as usize);
    let input = SequentialSlice::new(audio.samples.as_slice(), channels, frames)
        .map_err(|e| fail(e.to_string()))?;
    // A resampler (its filter and FFT plans) per thread and rate pair.
    let out = RESAMPLERS.with_borrow_mut(|cache| {
        // A few rate pairs at a time: odd rates must not pile up filters.
        if cache.len() >= 8 && !cache.contains_key(&(from, to, channels)) {
            cache.clear();
        }
        let resampler = match cache.entry((from, to, channels)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                Fft::<f32>::new_custom(
                    from,
                    to,
                    block_frames(from, to),
                    1,
                    channels,
                    WindowFunction::BlackmanHarris2,
                    FixedSync::Both,
                )
                .map_err(|e| fail(e.to_string()))?,
            ),
        };
        // process_all starts from a reset resampler.
        resampler
            .process_all(&input, frames, None)
            .map_err(|e| fail(e.to_string()))
    })?;
    let n = out.frames();
    let data = out.take_data();
    if channels == 1 {
        return Ok(Audio {
            samples: data,
            channels,
            rate,
        });
    }
    // Interleaved to planes.
    let mut samples = vec![0f32; n * channels];
    for (i, frame) in data.chunks_exact(channels).enumerate() {
        for (c, &s) in frame.iter().enumerate() {
            samples[c * n + i] = s;
        }
    }
    Ok(Audio {
        samples,
        channels,
        rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, seconds: f32) -> Audio {
        let n = (rate as f32 * seconds) as usize;
        Audio {
            samples: (0..n)
                .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
                .collect(),
            channels: 1,
            rate,
        }
    }

    /// Energy of `audio` at `hz` (a single DFT bin), relative to its total.
    fn share_at(audio: &Audio, hz: f32) -> f32 {
        let (mut re, mut im) = (0f64, 0f64);
        for (i, &s) in audio.samples.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * hz as f64 * i as f64 / audio.rate as f64;
            re += s as f64 * ph.cos();
            im += s as f64 * ph.sin();
        }
        let total: f64 = audio.samples.iter().map(|&s| (s as f64).powi(2)).sum();
        ((re * re + im * im) / (total * audio.samples.len() as f64 / 2.0)) as f32
    }

    #[test]
    fn a_tone_keeps_its_pitch_and_the_length_scales() {
        let out = resample(tone(44100, 1000.0, 0.5), 16000).unwrap();
        assert_eq!(out.rate, 16000);
        assert!(
            (out.frames() as i64 - 8000).abs() <= 1,
            "{} frames",
            out.frames()
        );
        assert!(share_at(&out, 1000.0) > 0.95, "{}", share_at(&out, 1000.0));
    }

    /// Where a resampled tone of `hz` leads the ideal one, in input samples.
    fn lead(from: u32, to: u32, hz: f64) -> f64 {
        let input = Audio {
            samples: (0..from)
                .map(|i| {
                    (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / from as f64).sin()) as f32
                })
                .collect(),
            channels: 1,
            rate: from,
        };
        let out = resample(input, to).unwrap();
        let w = 2.0 * std::f64::consts::PI * hz / to as f64;
        // Least squares of a sin(w m) + b cos(w m) away from the edges.
        let (mut ss, mut sc, mut cc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for m in (to as usize / 8)..(to as usize * 7 / 8) {
            let (s, c, y) = (
                (w * m as f64).sin(),
                (w * m as f64).cos(),
                out.samples[m] as f64,
            );
            (ss, sc, cc, ys, yc) = (ss + s * s, sc + s * c, cc + c * c, ys + y * s, yc + y * c);
        }
        let det = ss * cc - sc * sc;
        let (a, b) = ((ys * cc - yc * sc) / det, (yc * ss - ys * sc) / det);
        b.atan2(a) / w * from as f64 / to as f64
    }

    #[test]
    fn resampled_audio_is_not_shifted_in_time() {
        for (from, to) in [
            (22050, 16000),
            (44100, 16000),
            (8000, 16000),
            (48000, 22050),
            (11025, 8000),
        ] {
            let l = lead(from, to, 440.0);
            assert!(l.abs() < 0.01, "{from} -> {to}: {l:.3} input samples early");
        }
    }

    #[test]
    fn content_above_the_new_nyquist_is_removed() {
        // 12 kHz cannot exist at 16 kHz: a band-limited resampler removes it
        // rather than folding it to 4 kHz.
        let out = resample(tone(48000, 12000.0, 0.5), 16000).unwrap();
        let rms =
            (out.samples.iter().map(|s| s * s).sum::<f32>() / out.samples.len() as f32).sqrt();
        assert!(rms < 0.01, "rms {rms}");
    }
}
