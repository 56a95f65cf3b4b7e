//! Audio decoding with symphonia: WAV (PCM 8/16/24/32-bit and float),
//! FLAC, MP3, OGG Vorbis, to f32 samples, optionally downmixed to mono.
//! A stream whose header declares more than `max_seconds` is refused before
//! it is decoded, and decoding stops (refusing it) once that much has come
//! out, so an absurd declared or real length never fills memory.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use super::{CHANNELS, WAVE, WaveShape};
use crate::config::{DecodeAudioConfig, TrimMode};
use crate::error::{Error, Result};
use crate::rejects::Rejection;
use crate::stages::columns::{batch_with, keep_ok, sample_seeds, schema_with};
use crate::stages::{BatchContext, Stage};

/// Decoded audio: `channels` planes of `frames` samples each, one after
/// the other (one plane when downmixed).
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub channels: usize,
    pub rate: u32,
}

impl Audio {
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1)
    }
}

/// Decode `bytes` (owned, or an Arrow buffer, read in place); `mono`
/// averages the channels.
pub fn decode<B: AsRef<[u8]> + Send + Sync + 'static>(
    bytes: B,
    max_seconds: f64,
    mono: bool,
) -> std::result::Result<Audio, Rejection> {
    if bytes.as_ref().is_empty() {
        return Err(("empty_file", "the file is empty".into()));
    }
    let audio = match decode_wav(bytes.as_ref(), max_seconds, mono) {
        Some(audio) => audio,
        None => decode_symphonia(bytes, max_seconds, mono)?,
    };
    check_rate(audio.rate)?;
    Ok(audio)
}

/// The sample rates kiln reads: a header outside them is hostile or broken,
/// and resampling from it would build absurd filters.
pub const RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

fn check_rate(rate: u32) -> std::result::Result<(), Rejection> {
    if RATES.contains(&rate) {
        return Ok(());
    }
    Err((
        "unsupported_rate",
        format!(
            "the sample rate is {rate} Hz, outside {} to {} Hz",
            RATES.start(),
            RATES.end()
        ),
    ))
}

/// symphonia's reader of whatever format `bytes` are in.
fn probe<B: AsRef<[u8]> + Send + Sync + 'static>(
    bytes: B,
) -> std::result::Result<Box<dyn FormatReader>, SymphoniaError> {
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    symphonia::default::get_probe().probe(
        &Hint::new(),
        mss,
        FormatOptions::default(),
        MetadataOptions::default(),
    )
}

/// Decode with symphonia, whatever the format.
fn decode_symphonia<B: AsRef<[u8]> + Send + Sync + 'static>(
    bytes: B,
    max_seconds: f64,
    mono: bool,
) -> std::result::Result<Audio, Rejection> {
    let lead = bytes.as_ref()[..bytes.as_ref().len().min(4)].to_vec();
    let mut format = probe(bytes).map_err(|e| {
        (
            "unknown_format",
            format!("not audio in a supported format (WAV, FLAC, MP3, OGG Vorbis): {e}"),
        )
    })?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(("no_audio_track", "the file has no audio track".to_string()))?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or((
            "unsupported_codec",
            "the track's codec is not audio".to_string(),
        ))?
        .clone();
    if let Some(rate) = params.sample_rate {
        check_rate(rate)?;
    }
    if let (Some(frames), Some(rate)) = (track.num_frames, params.sample_rate)
        && rate > 0
        && frames as f64 / rate as f64 > max_seconds
    {
        return Err((
            "too_long",
            format!(
                "the header declares {:.1} s, over limits.max_audio_seconds = {max_seconds}",
                frames as f64 / rate as f64
            ),
        ));
    }
    let track_id = track.id;
    let track = track.clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| ("unsupported_codec", e.to_string()))?;
    let mut planes: Vec<Vec<f32>> = Vec::new();
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut bad_packets = 0usize;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(e) => return Err(("corrupt_audio", e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(audio) => {
                let spec = audio.spec();
                rate = spec.rate();
                if planes.is_empty() {
                    planes = vec![Vec::new(); audio.num_planes().max(1)];
                }
                if audio.num_planes() != planes.len() {
                    return Err((
                        "corrupt_audio",
                        format!(
                            "the stream changes from {} channels to {}",
                            planes.len(),
                            audio.num_planes()
                        ),
                    ));
                }
                // Straight into the end of each channel's samples.
                let start = planes[0].len();
                let n = audio.samples_planar();
                let mut tails: Vec<&mut [f32]> = planes
                    .iter_mut()
                    .map(|p| {
                        p.resize(start + n, 0.0);
                        &mut p[start..]
                    })
                    .collect();
                audio.copy_to_slice_planar(&mut tails);
                if rate > 0 && planes[0].len() as f64 / rate as f64 > max_seconds {
                    return Err((
                        "too_long",
                        format!("longer than limits.max_audio_seconds = {max_seconds}"),
                    ));
                }
            }
            Err(SymphoniaError::DecodeError(_)) => bad_packets += 1,
            Err(e) => return Err(("corrupt_audio", e.to_string())),
        }
    }
    let frames = planes.first().map_or(0, Vec::len);
    // A file cut short: the stream ends before the length its header
    // declares. WAV and FLAC headers are exact; lossy codecs may be off by
    // a frame or two of padding.
    let exact = matches!(lead.as_slice(), b"RIFF" | b"fLaC");
    if let Some(declared) = track.num_frames
        && declared > 0
        && (frames as u64) + if exact { 0 } else { (declared / 50).max(2048) } < declared
    {
        return Err((
            "truncated",
            format!("the header declares {declared} samples, the stream ends after {frames}"),
        ));
    }
    if frames == 0 {
        let why = if bad_packets > 0 {
            format!("no packet decoded ({bad_packets} failed)")
        } else {
            "the stream has no samples".to_string()
        };
        return Err(("empty_audio", why));
    }
    Ok(assemble(planes, rate, mono))
}

/// Decoded channels as [`Audio`], averaged into one when `mono`.
fn assemble(planes: Vec<Vec<f32>>, rate: u32, mono: bool) -> Audio {
    if mono && planes.len() > 1 {
        let n = planes.len() as f32;
        let mut rest = planes.into_iter();
        let mut mixed = rest.next().expect("more than one");
        for p in rest {
            mixed.iter_mut().zip(&p).for_each(|(m, s)| *m += s);
        }
        mixed.iter_mut().for_each(|m| *m /= n);
        return Audio {
            samples: mixed,
            channels: 1,
            rate,
        };
    }
    Audio {
        channels: planes.len(),
        samples: planes.concat(),
        rate,
    }
}

/// Interleaved samples of `W` bytes each, converted, into one vector a
/// channel (or their average, summed in channel order as [`assemble`]
/// does, when `mono`).
fn split<const W: usize>(
    data: &[u8],
    channels: usize,
    mono: bool,
    convert: impl Fn([u8; W]) -> f32,
) -> Vec<Vec<f32>> {
    let frames = data.len() / (W * channels);
    let samples: Vec<f32> = data[..frames * W * channels]
        .chunks_exact(W)
        .map(|s| convert(s.try_into().expect("W bytes")))
        .collect();
    if channels == 1 {
        return vec![samples];
    }
    if mono {
        let n = channels as f32;
        let mixed = samples
            .chunks_exact(channels)
            .map(|f| f[1..].iter().fold(f[0], |m, s| m + s) / n)
            .collect();
        return vec![mixed];
    }
    (0..channels)
        .map(|c| samples.iter().skip(c).step_by(channels).copied().collect())
        .collect()
}

/// A complete PCM (8, 16, 24, 32-bit) or float WAV within `max_seconds`,
/// converted to f32 exactly as symphonia converts each sample format, but
/// a whole buffer at a time (symphonia's PCM decoder renders sample by
/// sample, which made it most of the cost of reading WAV). `None` for
/// anything else, which symphonia then decodes or rejects: other codecs,
/// odd layouts, a data chunk cut short, no samples, too long.
fn decode_wav(b: &[u8], max_seconds: f64, mono: bool) -> Option<Audio> {
    let u16_at = |i: usize| Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
    if b.get(0..4)? != b"RIFF" || b.get(8..12)? != b"WAVE" {
        return None;
    }
    // The RIFF size must be the file's: anything else goes to symphonia.
    if (u32_at(4)? as usize).checked_add(8)? != b.len() {
        return None;
    }
    // (float, bytes a sample, channels, rate)
    let mut fmt: Option<(bool, usize, usize, u32)> = None;
    let mut pos = 12usize;
    while pos.checked_add(8)? <= b.len() {
        let size = u32_at(pos + 4)? as usize;
        let body = pos + 8;
        let end = body.checked_add(size)?;
        match b.get(pos..pos + 4)? {
            b"fmt " => {
                if !matches!(size, 16 | 18 | 40) || end > b.len() {
                    return None;
                }
                // The extension's size: none, or 22 bytes for EXTENSIBLE.
                let extension = if size > 16 { u16_at(body + 16)? } else { 0 };
                if extension != if size == 40 { 22 } else { 0 } {
                    return None;
                }
                let mut tag = u16_at(body)?;
                let channels = u16_at(body + 2)? as usize;
                let rate = u32_at(body + 4)?;
                let align = u16_at(body + 12)? as usize;
                let bits = u16_at(body + 14)?;
                if tag == 0xFFFE {
                    // WAVE_FORMAT_EXTENSIBLE: every container bit valid, a
                    // speaker per channel, the KSDATAFORMAT sub-format GUID.
                    const GUID_TAIL: [u8; 14] =
                        [0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71];
                    if size != 40
                        || u16_at(body + 18)? != bits
                        || u32_at(body + 20)?.count_ones() as usize != channels
                        || b.get(body + 26..body + 40)? != GUID_TAIL
                    {
                        return None;
                    }
                    tag = u16_at(body + 24)?;
                } else if size == 40 {
                    return None;
                }
                let float = match (tag, bits) {
                    (1, 8 | 16 | 24 | 32) => false,
                    (3, 32) => true,
                    _ => return None,
                };
                let width = bits as usize / 8;
                if !(1..=26).contains(&channels)
                    || !RATES.contains(&rate)
                    || align != channels * width
                {
                    return None;
                }
                fmt = Some((float, width, channels, rate));
            }
            b"data" => {
                let (float, width, channels, rate) = fmt?;
                let data = b.get(body..end)?;
                let frames = data.len() / (width * channels);
                if frames == 0 || frames as f64 / rate as f64 > max_seconds {
                    return None;
                }
                let planes = match (float, width) {
                    (true, _) => split(data, channels, mono, f32::from_le_bytes),
                    (false, 1) => {
                        split(data, channels, mono, |s: [u8; 1]| s[0] as f32 / 128.0 - 1.0)
                    }
                    (false, 2) => split(data, channels, mono, |s: [u8; 2]| {
                        i16::from_le_bytes(s) as f32 / 32_768.0
                    }),
                    (false, 3) => split(data, channels, mono, |s: [u8; 3]| {
                        (i32::from_le_bytes([0, s[0], s[1], s[2]]) >> 8) as f32 / 8_388_608.0
                    }),
                    _ => split(data, channels, mono, |s: [u8; 4]| {
                        (i32::from_le_bytes(s) as f64 / 2_147_483_648.0) as f32
                    }),
                };
                return Some(assemble(planes, rate, mono));
            }
            // A fact chunk holds one u32; any other chunk (LIST...) is
            // left to symphonia, which checks it.
            b"fact" if size == 4 => {}
            _ => return None,
        }
        pos = end + (size & 1);
    }
    None
}

/// What `bytes` decode to, in bytes of float32 samples, as their header
/// claims: frames times channels, at most `max_seconds` long, and as many
/// again times the ratio when resampled up to `resample_to`. Only the
/// first 64 KiB are probed; a stream that does not declare its length
/// (an OGG, an MP3 without a Xing header) counts as 16 times its size.
pub fn claimed_bytes(bytes: &[u8], max_seconds: f64, resample_to: Option<u32>) -> u64 {
    let guess = bytes.len() as u64 * 16;
    let head = bytes[..bytes.len().min(64 << 10)].to_vec();
    let probe = move || {
        let format = probe(head).ok()?;
        let track = format.default_track(TrackType::Audio)?;
        let params = track.codec_params.as_ref()?.audio()?.clone();
        let rate = params.sample_rate? as u64;
        let channels = params.channels.as_ref().map_or(1, |c| c.count()).max(1) as u64;
        let cap = (max_seconds * rate as f64) as u64;
        let decoded = match track.num_frames {
            Some(frames) => frames.min(cap) * channels * 4,
            None => guess.min(cap * channels * 4),
        };
        let up = resample_to.map_or(1.0, |to| (to as f64 / rate.max(1) as f64).max(1.0));
        Some((decoded as f64 * up) as u64)
    };
    // Hostile bytes are the decoder's to reject, not the reader's.
    std::panic::catch_unwind(probe)
        .ok()
        .flatten()
        .unwrap_or(guess)
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
) -> std::result::Result<Audio, Rejection> {
    // Hostile bytes must not take the run down with a decoder's panic.
    std::panic::catch_unwind(move || {
        let audio = decode(InPlace(bytes), max_seconds, cfg.mono)?;
        let audio = match cfg.sample_rate {
            Some(rate) => super::resample::resample(audio, rate)?,
            None => audio,
        };
        Ok(match cfg.duration {
            Some(seconds) => fit(audio, seconds, cfg.trim, seed),
            None => audio,
        })
    })
    .unwrap_or_else(|_| Err(("corrupt_audio", "the decoder failed on this file".into())))
}

/// Trim (keeping the start, the centre or a random window) or pad with
/// zeros at the end to `seconds`.
pub fn fit(audio: Audio, seconds: f64, trim: TrimMode, seed: u64) -> Audio {
    let want = (seconds * audio.rate as f64).round() as usize;
    let frames = audio.frames();
    let channels = audio.channels.max(1);
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
pub struct DecodeAudioStage {
    cfg: DecodeAudioConfig,
    max_seconds: f64,
}

impl DecodeAudioStage {
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
        Ok(DecodeAudioStage {
            cfg: cfg.clone(),
            max_seconds,
        })
    }
}

impl Stage for DecodeAudioStage {
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
        Ok(schema_with(input, &["_audio"], &shape.fields()))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let bytes = batch
            .column_by_name("_audio")
            .ok_or_else(|| Error::Execution("decode_audio: no `_audio` column".into()))?
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
        let (batch, clips) = keep_ok(batch, results, cx)?;
        let schema = self.output_schema(&batch.schema())?;
        let wave = super::f32_lists(clips.iter().map(|a| a.samples.as_slice()));
        let channels = UInt32Array::from_iter_values(clips.iter().map(|a| a.channels as u32));
        let rates = UInt32Array::from_iter_values(clips.iter().map(|a| a.rate));
        let frames = UInt32Array::from_iter_values(clips.iter().map(|a| a.frames() as u32));
        batch_with(
            &batch,
            &schema,
            vec![
                (WAVE, wave),
                (CHANNELS, Arc::new(channels)),
                ("sample_rate", Arc::new(rates)),
                ("num_samples", Arc::new(frames)),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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
            1 => crate::config::SampleFormat::Pcm16,
            _ => crate::config::SampleFormat::Float32,
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
}
