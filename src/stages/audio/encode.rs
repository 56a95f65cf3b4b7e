//! `encode_audio`: the decoded waveform as a WAV file (16-bit PCM or 32-bit
//! float, channels interleaved) in the `audio` column as
//! `struct<bytes, path>`, which HuggingFace `datasets` reads as its `Audio`
//! feature (the field carries the sample rate when every clip shares one).

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, SchemaRef};
use rayon::prelude::*;

use super::{WaveShape, Waves, require_wave};
use crate::error::Result;
use crate::schema::{HF_FEATURE, SAMPLE_RATE, media_struct_column, media_struct_type};
use crate::stages::columns::{batch_with, keep_ok, schema_with};
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleFormat {
    /// 16-bit integer PCM.
    #[default]
    Pcm16,
    /// 32-bit float.
    Float32,
}

/// Store the decoded waveform as WAV bytes in the `audio` column, the layout
/// HuggingFace `datasets` reads as its `Audio` feature.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeAudioConfig {
    #[serde(default)]
    pub sample_format: SampleFormat,
}

/// The largest WAV `encode_audio` stores (an Arrow binary column holds at
/// most 2 GiB a batch, a WAV header counts to 4 GiB).
const MAX_WAV_BYTES: usize = 1 << 30;

/// A WAV file of `samples` (channels one after the other) at `rate`.
pub fn wav(samples: &[f32], channels: usize, rate: u32, format: SampleFormat) -> Vec<u8> {
    let channels = channels.max(1);
    let frames = samples.len() / channels;
    let (tag, width): (u16, usize) = match format {
        SampleFormat::Pcm16 => (1, 2),
        SampleFormat::Float32 => (3, 4),
    };
    let data_len = frames * channels * width;
    let mut out = Vec::with_capacity(44 + data_len);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(channels as u16).to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    let byte_rate = (rate as u64 * (channels * width) as u64).min(u32::MAX as u64) as u32;
    out.extend_from_slice(&byte_rate.to_le_bytes());
    out.extend_from_slice(&((channels * width) as u16).to_le_bytes());
    out.extend_from_slice(&(8 * width as u16).to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    for i in 0..frames {
        for c in 0..channels {
            let s = samples[c * frames + i];
            match format {
                // As libsndfile writes floats to 16-bit: scaled by 32767,
                // rounded, clipped.
                SampleFormat::Pcm16 => out.extend_from_slice(
                    &((s as f64 * 32767.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes(),
                ),
                SampleFormat::Float32 => out.extend_from_slice(&s.to_le_bytes()),
            }
        }
    }
    out
}

pub struct EncodeAudio {
    format: SampleFormat,
}

impl EncodeAudio {
    pub fn new(cfg: &EncodeAudioConfig) -> Self {
        EncodeAudio {
            format: cfg.sample_format,
        }
    }
}

impl Stage for EncodeAudio {
    fn name(&self) -> &str {
        "encode_audio"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let shape: WaveShape = require_wave(input, "encode_audio")?;
        let mut meta = HashMap::from([(HF_FEATURE.to_string(), "Audio".to_string())]);
        if let Some(rate) = shape.rate {
            meta.insert(SAMPLE_RATE.to_string(), rate.to_string());
        }
        let field = Field::new("audio", media_struct_type(), false).with_metadata(meta);
        Ok(schema_with(input, &[], &[field]))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let waves = Waves::of(&batch)?;
        let width = match self.format {
            SampleFormat::Pcm16 => 2,
            SampleFormat::Float32 => 4,
        };
        let results: Vec<_> = (0..batch.num_rows())
            .into_par_iter()
            .map(|row| {
                let (samples, channels, rate) = waves.get(row);
                match 44 + samples.len() * width {
                    n if n > MAX_WAV_BYTES => Err((
                        "too_large_to_store",
                        format!("the WAV would be {n} bytes, over {MAX_WAV_BYTES}"),
                    )),
                    _ => Ok(wav(samples, channels, rate, self.format)),
                }
            })
            .collect();
        let (batch, files) = keep_ok(batch, results, cx)?;
        let audio = media_struct_column(&batch, files)?;
        let schema = self.output_schema(&batch.schema())?;
        batch_with(&batch, &schema, vec![("audio", audio)])
    }
}

impl BuildStage for EncodeAudioConfig {
    fn build(&self, _cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        Ok(Built::Ready(Arc::new(EncodeAudio::new(self))))
    }

    fn is_audio(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trips_through_the_decoder() {
        let left: Vec<f32> = (0..800).map(|i| (i as f32 / 40.0).sin() * 0.5).collect();
        let right: Vec<f32> = left.iter().map(|v| -v).collect();
        let samples = [left.clone(), right].concat();
        for format in [SampleFormat::Pcm16, SampleFormat::Float32] {
            let bytes = wav(&samples, 2, 16000, format);
            let back = crate::codec::audio::decode(bytes, 10.0, false).unwrap();
            assert_eq!((back.channels, back.rate, back.frames()), (2, 16000, 800));
            let tol = match format {
                SampleFormat::Pcm16 => 2.0 / 32768.0,
                SampleFormat::Float32 => 0.0,
            };
            for (a, b) in samples.iter().zip(&back.samples) {
                assert!((a - b).abs() <= tol, "{a} vs {b}");
            }
        }
    }
}
