//! Band-limited resampling (rubato's synchronous FFT resampler, which
//! filters above the lower Nyquist frequency before changing the rate).

use rubato::audioadapter::Adapter;
use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};

use super::decode::Audio;
use crate::rejects::Rejection;

/// `audio` at `rate` Hz; unchanged when it is already.
pub fn resample(audio: Audio, rate: u32) -> Result<Audio, Rejection> {
    if audio.rate == rate || audio.samples.is_empty() {
        return Ok(audio);
    }
    let channels = audio.channels.max(1);
    let frames = audio.frames();
    let planes: Vec<Vec<f32>> = audio
        .samples
        .chunks_exact(frames)
        .map(<[f32]>::to_vec)
        .collect();
    let fail = |e: String| ("resample_failed", e);
    let mut resampler = Fft::<f32>::new(
        audio.rate as usize,
        rate as usize,
        1024,
        channels,
        FixedSync::Both,
    )
    .map_err(|e| fail(e.to_string()))?;
    let input =
        SequentialSliceOfVecs::new(&planes, channels, frames).map_err(|e| fail(e.to_string()))?;
    let out = resampler
        .process_all(&input, frames, None)
        .map_err(|e| fail(e.to_string()))?;
    let n = out.frames();
    let data = out.take_data();
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
