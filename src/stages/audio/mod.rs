//! Audio stages: `decode` turns files into samples (with
//! [`crate::codec::audio`] and [`crate::codec::resample`]); `mel` computes mel spectrograms as librosa does (its reference values
//! are the tests); `specaugment` masks and warps them as Park et al. (2019)
//! describe.
//!
//! Stages pass the decoded waveform between them as working columns that
//! are never stored: `_wave` (float32 samples, one channel after the other)
//! and `_channels`. `sample_rate` and `num_samples` (per channel) are
//! stored. What every clip shares after `decode_audio` (one channel, a
//! resampled rate, a fixed duration) travels in `_wave`'s field metadata,
//! so a stage that needs it (a mel filterbank is for one rate) refuses the
//! pipeline before any data is read.
//!
//! | stage | what it does |
//! |---|---|
//! | `decode_audio` | encoded bytes to samples; downmix, resample, trim or pad; limits on duration |
//! | `mel_spectrogram` | `mel` (n_mels lists of frames) and `mel_frames`, as librosa |
//! | `spec_augment` | SpecAugment copies of `mel`, with what each copy drew |
//! | `encode_audio` | the waveform as WAV bytes in datasets' `Audio` layout |

pub mod decode;
pub mod encode;
pub mod mel;
pub mod specaugment;
mod spectrum;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float32Array, ListArray, RecordBatch, UInt32Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};

use crate::error::{Error, Result};

pub const WAVE: &str = "_wave";
pub const CHANNELS: &str = "_channels";
const RATE_KEY: &str = "kiln.sample_rate";
const CHANNELS_KEY: &str = "kiln.channels";

/// What every clip of the pipeline shares after decoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaveShape {
    /// The rate every clip was resampled to.
    pub rate: Option<u32>,
    /// 1 when downmixed.
    pub channels: Option<u32>,
}

impl WaveShape {
    pub fn of(schema: &Schema) -> Option<Self> {
        let meta = schema.field_with_name(WAVE).ok()?.metadata();
        Some(WaveShape {
            rate: meta.get(RATE_KEY).and_then(|v| v.parse().ok()),
            channels: meta.get(CHANNELS_KEY).and_then(|v| v.parse().ok()),
        })
    }

    /// The working fields, and the stored `sample_rate` and `num_samples`.
    pub fn fields(&self) -> [Field; 4] {
        let mut meta = HashMap::new();
        if let Some(r) = self.rate {
            meta.insert(RATE_KEY.to_string(), r.to_string());
        }
        if let Some(c) = self.channels {
            meta.insert(CHANNELS_KEY.to_string(), c.to_string());
        }
        [
            Field::new(WAVE, f32_list_type(), false).with_metadata(meta),
            Field::new(CHANNELS, DataType::UInt32, false),
            Field::new("sample_rate", DataType::UInt32, false),
            Field::new("num_samples", DataType::UInt32, false),
        ]
    }
}

/// Error unless the input has decoded audio; what it shares.
pub fn require_wave(input: &Schema, stage: &str) -> Result<WaveShape> {
    let decoded = input
        .field_with_name(WAVE)
        .is_ok_and(|f| f.data_type() == &f32_list_type())
        && input.field_with_name(CHANNELS).is_ok();
    match WaveShape::of(input) {
        Some(shape) if decoded => Ok(shape),
        _ => Err(Error::Config(format!(
            "{stage} works on decoded audio: put a `decode_audio` stage before it"
        ))),
    }
}

/// `list<float32>`.
pub fn f32_list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float32, true)))
}

/// The decoded audio of a batch.
pub struct Waves<'a> {
    samples: &'a ListArray,
    values: &'a [f32],
    channels: &'a UInt32Array,
    rates: &'a UInt32Array,
}

impl<'a> Waves<'a> {
    pub fn of(batch: &'a RecordBatch) -> Result<Self> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("no `{name}` column")))
        };
        let samples = col(WAVE)?.as_list::<i32>();
        Ok(Waves {
            samples,
            values: samples
                .values()
                .as_primitive::<arrow::datatypes::Float32Type>()
                .values(),
            channels: col(CHANNELS)?.as_primitive::<UInt32Type>(),
            rates: col("sample_rate")?.as_primitive::<UInt32Type>(),
        })
    }

    /// `(samples, channels, rate)` of a row; channels one after the other.
    pub fn get(&self, row: usize) -> (&'a [f32], usize, u32) {
        let offsets = self.samples.value_offsets();
        let (a, b) = (offsets[row] as usize, offsets[row + 1] as usize);
        (
            &self.values[a..b],
            self.channels.value(row) as usize,
            self.rates.value(row),
        )
    }
}

/// A `list<float32>` column from each row's values.
pub fn f32_lists<'a>(rows: impl IntoIterator<Item = &'a [f32]>) -> ArrayRef {
    let rows: Vec<&[f32]> = rows.into_iter().collect();
    let mut values = Vec::with_capacity(rows.iter().map(|r| r.len()).sum());
    for r in &rows {
        values.extend_from_slice(r);
    }
    f32_list_column(values, rows.iter().map(|r| r.len()))
}

/// A `list<float32>` column of `values` (taken, not copied) cut into lists
/// of `lengths`.
fn f32_list_column(values: Vec<f32>, lengths: impl IntoIterator<Item = usize>) -> ArrayRef {
    let DataType::List(item) = f32_list_type() else {
        unreachable!("a list type")
    };
    Arc::new(ListArray::new(
        item,
        OffsetBuffer::from_lengths(lengths),
        Arc::new(Float32Array::from(values)),
        None,
    ))
}

/// `list<list<float32>>`: the type of `mel`.
pub fn mel_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", f32_list_type(), true)))
}

/// The `mel` column from the rows' values one after the other (taken, not
/// copied), each row mel-major: `n_mels` lists of its `frames` values. A
/// row of no frames has no bands.
pub fn mel_column(values: Vec<f32>, n_mels: usize, frames: &[usize]) -> ArrayRef {
    let bands = |f: usize| if f == 0 { 0 } else { n_mels };
    let lists = f32_list_column(
        values,
        frames
            .iter()
            .flat_map(|&f| std::iter::repeat_n(f, bands(f))),
    );
    Arc::new(ListArray::new(
        Arc::new(Field::new("item", f32_list_type(), true)),
        OffsetBuffer::from_lengths(frames.iter().map(|&f| bands(f))),
        lists,
        None,
    ))
}

/// The `mel` column of a batch: its values (all rows, mel-major, one
/// after the other), each row's value range and frame count.
pub struct Mels<'a> {
    values: &'a [f32],
    /// Offsets into `values` of each row.
    starts: Vec<usize>,
    frames: &'a UInt32Array,
}

impl<'a> Mels<'a> {
    pub fn of(mel: &'a ListArray, frames: &'a UInt32Array) -> Self {
        let bands = mel.values().as_list::<i32>();
        let values = bands
            .values()
            .as_primitive::<arrow::datatypes::Float32Type>()
            .values();
        let band_offsets = bands.value_offsets();
        let starts = mel
            .value_offsets()
            .iter()
            .map(|&b| band_offsets[b as usize] as usize)
            .collect();
        Mels {
            values,
            starts,
            frames,
        }
    }

    /// A row's values (mel-major) and its frame count.
    pub fn get(&self, row: usize) -> (&'a [f32], usize) {
        (
            &self.values[self.starts[row]..self.starts[row + 1]],
            self.frames.value(row) as usize,
        )
    }
}

/// `values` cut into consecutive mutable slices of `lengths`.
pub fn split_mut<'a>(mut values: &'a mut [f32], lengths: &[usize]) -> Vec<&'a mut [f32]> {
    lengths
        .iter()
        .map(|&n| {
            let (head, tail) = std::mem::take(&mut values).split_at_mut(n);
            values = tail;
            head
        })
        .collect()
}
