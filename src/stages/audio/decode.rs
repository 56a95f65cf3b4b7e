//! `decode_audio`: encoded bytes to float samples ([`crate::codec::audio`]),
//! then downmixed, resampled ([`crate::codec::resample`]) and trimmed or
//! padded as configured.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{CHANNELS, WAVE, WaveShape};
use crate::codec::audio::{Audio, RATES, decode};
use crate::codec::resample::resample;
use crate::error::{Error, Result};
use crate::rejects::Rejection;
use crate::simd::peak_bits;
use crate::stages::columns::{batch_with, keep_ok, sample_seeds, schema_with};
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};
use serde::{Deserialize, Serialize};

/// Where a clip longer than `duration` is cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrimMode {
    /// Keep the beginning.
    #[default]
    Start,
    /// Keep the middle.
    Center,
    /// Keep a window at an offset drawn from the sample's seed.
    Random,
}

/// Decode the audio bytes (symphonia) to float samples, then optionally
/// downmix, resample and trim or pad.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeAudioConfig {
    /// Average the channels into one.
    #[serde(default = "default_true")]
    pub mono: bool,
    /// Resample to this rate (Hz), band-limited; by default the file's own.
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// Trim or pad (with zeros at the end) to this many seconds.
    #[serde(default)]
    pub duration: Option<f64>,
    /// Which part of a longer clip `duration` keeps.
    #[serde(default)]
    pub trim: TrimMode,
    /// A clip with NaN or infinite samples: a reject (`non_finite`, the
    /// default), or kept with those samples set to 0 and their count in
    /// the row's `non_finite_zeroed` column.
    #[serde(default, skip_serializing_if = "NonFinite::is_reject")]
    pub non_finite: NonFinite,
}

/// What `decode_audio` does with a clip holding NaN or infinite samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    #[default]
    Reject,
    Zero,
}

impl NonFinite {
    fn is_reject(&self) -> bool {
        *self == NonFinite::Reject
    }
}

/// The column recording how many samples `non_finite = "zero"` set to 0.
pub const ZEROED: &str = "non_finite_zeroed";

fn default_true() -> bool {
    true
}

/// A file's bytes inside an Arrow buffer, decoded where they are.
struct InPlace(arrow::buffer::Buffer);

impl AsRef<[u8]> for InPlace {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Decode, then resample and trim or pad, as `decode_audio` is configured.
pub fn prepare(
    bytes: arrow::buffer::Buffer,
    cfg: &DecodeAudioConfig,
    max_seconds: f64,
    seed: u64,
) -> std::result::Result<(Audio, u32), Rejection> {
    // Hostile bytes must not take the run down with a decoder's panic.
    std::panic::catch_unwind(move || {
        let mut audio = decode(InPlace(bytes), max_seconds, cfg.mono)?;
        let zeroed = match cfg.non_finite {
            NonFinite::Reject => 0,
            NonFinite::Zero => zero_non_finite(&mut audio),
        };
        // One pass finds both a NaN or infinity and the peak.
        let peak = peak_bits(&audio.samples);
        if peak >= f32::INFINITY.to_bits() {
            return Err(non_finite(&audio));
        }
        in_range(f32::from_bits(peak))?;
        let audio = match cfg.sample_rate {
            Some(rate) => resample(audio, rate)?,
            None => audio,
        };
        let audio = match cfg.duration {
            Some(seconds) => fit(audio, seconds, cfg.trim, seed),
            None => audio,
        };
        Ok((audio, zeroed))
    })
    .unwrap_or_else(|_| Err(("corrupt_audio", "the decoder failed on this file".into())))
}

/// A clip with a NaN or infinite sample is a reject (`non_finite`): the
/// stages after decoding would turn it into finite numbers (a resampler
/// spreads it, a dB scale floors it, 16-bit PCM makes it 0), so the dataset
/// would silently hold invented values.
fn non_finite(audio: &Audio) -> Rejection {
    let first = audio
        .samples
        .iter()
        .position(|v| !v.is_finite())
        .unwrap_or(0);
    let bad = audio.samples.iter().filter(|v| !v.is_finite()).count();
    let frames = audio.frames().max(1);
    (
        "non_finite",
        format!(
            "{bad} of its {} samples are NaN or infinite (the first at {:.4} s of channel {})",
            audio.samples.len(),
            (first % frames) as f64 / audio.rate.max(1) as f64,
            first / frames
        ),
    )
}

/// The largest sample magnitude kept. Float audio lies within ±1 (a file
/// that stores 16-bit values unscaled reaches 32768); a sample far beyond
/// is a damaged file or not audio, and near float32's limit the resampler's
/// and the spectrogram's sums overflow.
pub const MAX_SAMPLE: f32 = 1e6;

/// A clip with a sample beyond ±[`MAX_SAMPLE`] is a reject (`out_of_range`).
fn in_range(peak: f32) -> std::result::Result<(), Rejection> {
    match peak <= MAX_SAMPLE {
        true => Ok(()),
        false => Err((
            "out_of_range",
            format!(
                "a sample of magnitude {peak:e}, beyond ±{MAX_SAMPLE:e} (float audio lies within ±1)"
            ),
        )),
    }
}

/// Set NaN and infinite samples to 0; how many there were.
fn zero_non_finite(audio: &mut Audio) -> u32 {
    let mut n = 0u32;
    for v in audio.samples.iter_mut().filter(|v| !v.is_finite()) {
        *v = 0.0;
        n = n.saturating_add(1);
    }
    n
}

/// Trim (keeping the start, the centre or a random window) or pad with
/// zeros at the end to `seconds`.
pub fn fit(audio: Audio, seconds: f64, trim: TrimMode, seed: u64) -> Audio {
    let want = (seconds * audio.rate as f64).round() as usize;
    let frames = audio.frames();
    let channels = audio.channels.max(1);
    if frames == want {
        return audio;
    }
    let start = match trim {
        _ if frames <= want => 0,
        TrimMode::Start => 0,
        TrimMode::Center => (frames - want) / 2,
        TrimMode::Random => ChaCha8Rng::seed_from_u64(seed).random_range(0..=frames - want),
    };
    let mut samples = Vec::with_capacity(want * channels);
    for plane in audio.samples.chunks_exact(frames.max(1)).take(channels) {
        let kept = &plane[start.min(plane.len())..(start + want).min(plane.len())];
        samples.extend_from_slice(kept);
        samples.resize(samples.len() + want - kept.len(), 0.0);
    }
    if audio.samples.is_empty() {
        samples.resize(want * channels, 0.0);
    }
    Audio {
        samples,
        channels,
        rate: audio.rate,
    }
}

/// `decode_audio`: the `_audio` bytes to `_wave`, `_channels`,
/// `sample_rate` and `num_samples`.
pub struct DecodeAudio {
    cfg: DecodeAudioConfig,
    max_seconds: f64,
}

impl DecodeAudio {
    pub fn new(
        cfg: &DecodeAudioConfig,
        max_seconds: f64,
    ) -> std::result::Result<Self, (String, String)> {
        if let Some(rate) = cfg.sample_rate
            && !RATES.contains(&rate)
        {
            return Err((
                "sample_rate".into(),
                format!(
                    "sample_rate must be from {} to {} Hz",
                    RATES.start(),
                    RATES.end()
                ),
            ));
        }
        if let Some(d) = cfg.duration
            && !(d.is_finite() && d > 0.0 && d <= max_seconds)
        {
            return Err((
                "duration".into(),
                format!(
                    "duration must be above 0 and at most limits.max_audio_seconds = {max_seconds}"
                ),
            ));
        }
        Ok(DecodeAudio {
            cfg: cfg.clone(),
            max_seconds,
        })
    }
}

impl Stage for DecodeAudio {
    fn name(&self) -> &str {
        "decode_audio"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        if input.field_with_name("_audio").is_err() {
            return Err(Error::Config(
                "decode_audio reads audio inputs (audio files, tar shards, tables with audio_column)".into(),
            ));
        }
        let shape = WaveShape {
            rate: self.cfg.sample_rate,
            channels: self.cfg.mono.then_some(1),
        };
        let mut fields = shape.fields().to_vec();
        if self.cfg.non_finite == NonFinite::Zero {
            fields.push(arrow::datatypes::Field::new(
                ZEROED,
                arrow::datatypes::DataType::UInt32,
                false,
            ));
        }
        Ok(schema_with(input, &["_audio"], &fields))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let bytes = batch
            .column_by_name("_audio")
            .ok_or_else(|| Error::Internal("decode_audio: no `_audio` column".into()))?
            .as_binary::<i32>()
            .clone();
        let seeds = sample_seeds(&batch, cx)?;
        let results: Vec<_> = (0..batch.num_rows())
            .into_par_iter()
            .map(|row| {
                // The file's bytes in place in the batch: an Arrow buffer
                // shares them, nothing is copied.
                let offsets = bytes.value_offsets();
                let (a, b) = (offsets[row] as usize, offsets[row + 1] as usize);
                let file = bytes.values().slice_with_length(a, b - a);
                prepare(file, &self.cfg, self.max_seconds, seeds[row])
            })
            .collect();
        let (batch, decoded) = keep_ok(batch, results, cx)?;
        let (clips, zeroed): (Vec<Audio>, Vec<u32>) = decoded.into_iter().unzip();
        let schema = self.output_schema(&batch.schema())?;
        let wave = super::f32_lists(clips.iter().map(|a| a.samples.as_slice()));
        let channels = UInt32Array::from_iter_values(clips.iter().map(|a| a.channels as u32));
        let rates = UInt32Array::from_iter_values(clips.iter().map(|a| a.rate));
        let frames = UInt32Array::from_iter_values(clips.iter().map(|a| a.frames() as u32));
        let mut columns: Vec<(&str, arrow::array::ArrayRef)> = vec![
            (WAVE, wave),
            (CHANNELS, Arc::new(channels)),
            ("sample_rate", Arc::new(rates)),
            ("num_samples", Arc::new(frames)),
        ];
        if self.cfg.non_finite == NonFinite::Zero {
            columns.push((ZEROED, Arc::new(UInt32Array::from(zeroed))));
        }
        batch_with(&batch, &schema, columns)
    }
}

impl BuildStage for DecodeAudioConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        let stage = DecodeAudio::new(self, cx.limits.max_audio_seconds)?;
        Ok(Built::Ready(Arc::new(stage)))
    }

    fn is_audio(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::codec::audio::{claimed_bytes, decode_symphonia, decode_wav};

    /// A WAV file: 16-bit PCM (`format` 1) or 32-bit float (3) of
    /// interleaved `frames`, its data size `declared` if given.
    fn wav(
        rate: u32,
        channels: u16,
        format: u16,
        frames: &[Vec<f32>],
        declared: Option<u32>,
    ) -> Vec<u8> {
        let channels = channels as usize;
        let planes: Vec<f32> = (0..channels)
            .flat_map(|c| frames.iter().map(move |f| f[c]))
            .collect();
        let format = match format {
            1 => crate::stages::audio::encode::SampleFormat::Pcm16,
            _ => crate::stages::audio::encode::SampleFormat::Float32,
        };
        let mut out = super::super::encode::wav(&planes, channels, rate, format);
        if let Some(size) = declared {
            out[4..8].copy_from_slice(&(36 + size).to_le_bytes());
            out[40..44].copy_from_slice(&size.to_le_bytes());
        }
        out
    }

    /// Every WAV fixture (8, 16, 24, 32-bit PCM, float, extensible,
    /// stereo), and odd sizes: the WAV reader gives symphonia's samples.
    #[test]
    fn wav_reader_equals_symphonia() {
        let mut files: Vec<Vec<u8>> = ["yes/yes_pcm16.wav", "yes/yes_u8.wav", "yes/yes_s24.wav"]
            .iter()
            .chain(&["no/no_s32.wav", "no/no_f32.wav", "no/no_stereo.wav"])
            .map(|f| {
                std::fs::read(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("fixtures/audio/folder")
                        .join(f),
                )
                .unwrap()
            })
            .collect();
        files.push(wav(8000, 3, 1, &vec![vec![0.5, -1.0, 0.25]; 7], None));
        files.push(wav(8000, 1, 3, &[vec![1.5], vec![-0.0]], None));
        for (i, bytes) in files.into_iter().enumerate() {
            for mono in [false, true] {
                let fast = decode_wav(&bytes, 60.0, mono).expect("a plain WAV");
                let slow = decode_symphonia(bytes.clone(), 60.0, mono).unwrap();
                assert_eq!(fast, slow, "file {i}, mono {mono}");
            }
        }
    }

    #[test]
    fn odd_headers_go_to_symphonia_and_absurd_rates_are_refused() {
        let good = wav(
            16000,
            1,
            1,
            &sine(800).iter().map(|f| vec![f[0]]).collect::<Vec<_>>(),
            None,
        );
        assert!(decode_wav(&good, 60.0, false).is_some());
        // A RIFF size that is not the file's, a chunk the reader does not
        // check: symphonia decides.
        let mut riff = good.clone();
        riff[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode_wav(&riff, 60.0, false).is_none());
        // A LIST chunk between fmt and data.
        let mut list = good[..36].to_vec();
        list.extend_from_slice(b"LIST\x04\x00\x00\x00INFO");
        list.extend_from_slice(&good[36..]);
        let n = list.len() as u32 - 8;
        list[4..8].copy_from_slice(&n.to_le_bytes());
        assert!(decode_wav(&list, 60.0, false).is_none());
        assert_eq!(decode(list, 60.0, false).unwrap().frames(), 800);
        // 0 Hz and 4 GHz headers: rejected, not resampled.
        for rate in [0u32, 4_294_967_291] {
            let mut bad = good.clone();
            bad[24..28].copy_from_slice(&rate.to_le_bytes());
            let cfg = DecodeAudioConfig {
                mono: true,
                sample_rate: Some(16000),
                duration: None,
                trim: TrimMode::Start,
                non_finite: NonFinite::Reject,
            };
            let buf = arrow::buffer::Buffer::from_vec(bad);
            let e = prepare(buf, &cfg, 60.0, 0).unwrap_err();
            assert!(
                matches!(e.0, "unsupported_rate" | "unknown_format"),
                "{rate}: {e:?}"
            );
        }
    }

    #[test]
    fn a_wav_missing_a_few_samples_is_truncated() {
        let frames: Vec<Vec<f32>> = sine(16000).iter().map(|f| vec![f[0]]).collect();
        let mut cut = wav(16000, 1, 1, &frames, None);
        cut.truncate(cut.len() - 200);
        // The RIFF size no longer fits: symphonia reads what is there.
        assert_eq!(decode(cut, 60.0, false).unwrap_err().0, "truncated");
    }

    #[test]
    fn header_claims_count_frames_and_channels_up_to_the_limit() {
        let frames = sine(1600);
        assert_eq!(
            claimed_bytes(&wav(16000, 2, 1, &frames, None), 60.0, None),
            1600 * 2 * 4
        );
        // 149 hours declared: counted as the limit, 20 s of 8 kHz mono.
        let huge = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/bad/huge_header.wav"),
        )
        .unwrap();
        assert_eq!(claimed_bytes(&huge, 20.0, None), 20 * 8000 * 4);
        // Resampled up to 48 kHz: six times the samples.
        assert_eq!(claimed_bytes(&huge, 20.0, Some(48000)), 6 * 20 * 8000 * 4);
        assert_eq!(claimed_bytes(&huge, 20.0, Some(4000)), 20 * 8000 * 4);
        assert_eq!(claimed_bytes(b"not audio", 20.0, None), 9 * 16);
    }

    fn sine(n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| {
                let v = (i as f32 * 0.05).sin() * 0.5;
                vec![v, -v]
            })
            .collect()
    }

    #[test]
    fn pcm16_and_float_wav_decode_and_downmix() {
        let frames = sine(1600);
        let a = decode(wav(16000, 2, 3, &frames, None), 60.0, false).unwrap();
        assert_eq!((a.rate, a.channels, a.frames()), (16000, 2, 1600));
        assert_eq!(a.samples[10], frames[10][0]);
        assert_eq!(a.samples[1600 + 10], frames[10][1]);
        let m = decode(wav(16000, 2, 1, &frames, None), 60.0, true).unwrap();
        assert_eq!((m.channels, m.frames()), (1, 1600));
        assert!(
            m.samples.iter().all(|v| v.abs() < 1e-4),
            "left and right cancel"
        );
    }

    #[test]
    fn bad_audio_is_refused_with_a_reason() {
        assert_eq!(decode(Vec::new(), 60.0, true).unwrap_err().0, "empty_file");
        let text = b"this is a text file, not a sound".to_vec();
        assert_eq!(decode(text, 60.0, true).unwrap_err().0, "unknown_format");
        // A header declaring ten hours of 16 kHz stereo.
        let huge = wav(16000, 2, 1, &sine(10), Some(16000 * 4 * 36000));
        assert_eq!(decode(huge, 60.0, true).unwrap_err().0, "too_long");
        let long = wav(16000, 2, 3, &sine(32000), None);
        assert_eq!(decode(long, 1.0, true).unwrap_err().0, "too_long");
    }

    #[test]
    fn a_float_wav_with_nan_or_infinite_samples_is_a_reject() {
        let cfg: DecodeAudioConfig = toml::from_str("mono = false\nsample_rate = 16000").unwrap();
        let run = |frames: &[Vec<f32>]| {
            let bytes = wav(8000, 2, 3, frames, None);
            prepare(arrow::buffer::Buffer::from_vec(bytes), &cfg, 60.0, 0)
        };
        let mut frames = sine(800);
        assert!(run(&frames).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            frames[400][1] = bad;
            let (kind, message) = run(&frames).unwrap_err();
            assert_eq!(kind, "non_finite");
            assert!(
                message.contains("1 of its 1600 samples")
                    && message.contains("0.0500 s of channel 1"),
                "{message}"
            );
        }
        // Asked to, the clip is kept with those samples at 0, and counted.
        let zero: DecodeAudioConfig =
            toml::from_str("mono = false\nnon_finite = \"zero\"").unwrap();
        frames[10][0] = f32::NAN;
        let bytes = wav(8000, 2, 3, &frames, None);
        let (audio, zeroed) =
            prepare(arrow::buffer::Buffer::from_vec(bytes), &zero, 60.0, 0).unwrap();
        assert_eq!(zeroed, 2);
        assert!(audio.samples.iter().all(|v| v.is_finite()));
        assert_eq!(audio.samples[10], 0.0, "channel 0, frame 10");
        assert_eq!(audio.samples[800 + 400], 0.0, "channel 1, frame 400");
    }

    /// Found by the `audio` fuzz target: finite samples near float32's
    /// limit made the resampler's FFT overflow and panic (caught, and
    /// rejected as a decoder failure). They are `out_of_range` now; 16-bit
    /// values stored unscaled in a float WAV are kept.
    #[test]
    fn a_float_wav_with_samples_near_the_float_limit_is_out_of_range() {
        let cfg: DecodeAudioConfig = toml::from_str(
            "mono = true
sample_rate = 16000",
        )
        .unwrap();
        let run = |peak: f32| {
            let frames: Vec<Vec<f32>> = sine(600).iter().map(|f| vec![f[0] * peak]).collect();
            let bytes = wav(22050, 1, 3, &frames, None);
            prepare(arrow::buffer::Buffer::from_vec(bytes), &cfg, 60.0, 0)
        };
        let (kind, message) = run(2.47e38).unwrap_err();
        assert_eq!(kind, "out_of_range", "{message}");
        assert!(run(32767.0).is_ok());
    }
}
