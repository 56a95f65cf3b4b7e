//! Audio decoding with symphonia: WAV (PCM 8/16/24/32-bit and float),
//! FLAC, MP3, OGG Vorbis, to f32 samples, optionally downmixed to mono.
//! A stream whose header declares more than `max_seconds` is refused before
//! it is decoded, and decoding stops (refusing it) once that much has come
//! out, so an absurd declared or real length never fills memory. Plain WAV
//! takes a faster path of its own with the same samples.

use std::io::Cursor;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::rejects::Rejection;

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
pub(crate) fn decode_symphonia<B: AsRef<[u8]> + Send + Sync + 'static>(
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
fn assemble(mut planes: Vec<Vec<f32>>, rate: u32, mono: bool) -> Audio {
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
    let channels = planes.len();
    let samples = match channels {
        1 => planes.pop().expect("one plane"),
        _ => planes.concat(),
    };
    Audio {
        channels,
        samples,
        rate,
    }
}

/// Interleaved samples of `W` bytes each, converted, into one vector a
/// channel (or their average, summed in channel order as [`assemble`]
/// does, when `mono`), in one pass over the bytes.
fn split<const W: usize>(
    data: &[u8],
    channels: usize,
    mono: bool,
    convert: impl Fn([u8; W]) -> f32,
) -> Vec<Vec<f32>> {
    let frames = data.len() / (W * channels);
    let data = &data[..frames * W * channels];
    let at = |f: &[u8], c: usize| convert(f[c * W..(c + 1) * W].try_into().expect("W bytes"));
    // Each output written in place by a loop over fixed-size frames, which
    // the compiler vectorises (collecting from a map does not here).
    let fill = |each: &dyn Fn(&[u8]) -> f32| {
        let mut out = vec![0f32; frames];
        for (o, f) in out.iter_mut().zip(data.chunks_exact(W * channels)) {
            *o = each(f);
        }
        out
    };
    match (channels, mono) {
        (1, _) => vec![fill_frames::<W, 1>(data, |f| convert(f[0]))],
        // The common stereo case on its own, so the loop is unrolled.
        (2, true) => vec![fill_frames::<W, 2>(data, |f| {
            (convert(f[0]) + convert(f[1])) / 2.0
        })],
        (_, true) => {
            let n = channels as f32;
            vec![fill(&|f| {
                (1..channels).fold(at(f, 0), |m, c| m + at(f, c)) / n
            })]
        }
        (_, false) => (0..channels).map(|c| fill(&|f| at(f, c))).collect(),
    }
}

/// `data` as frames of `C` samples of `W` bytes, each frame made one value.
fn fill_frames<const W: usize, const C: usize>(
    data: &[u8],
    each: impl Fn([[u8; W]; C]) -> f32,
) -> Vec<f32> {
    let (frames, _) = data.as_chunks::<W>();
    let (frames, _) = frames.as_chunks::<C>();
    let mut out = vec![0f32; frames.len()];
    crate::simd::with_avx2(
        #[inline(always)]
        || {
            for (o, f) in out.iter_mut().zip(frames) {
                *o = each(*f);
            }
        },
    );
    out
}

/// A complete PCM (8, 16, 24, 32-bit) or float WAV within `max_seconds`,
/// converted to f32 exactly as symphonia converts each sample format, but
/// a whole buffer at a time (symphonia's PCM decoder renders sample by
/// sample, which made it most of the cost of reading WAV). `None` for
/// anything else, which symphonia then decodes or rejects: other codecs,
/// odd layouts, a data chunk cut short, no samples, too long.
pub(crate) fn decode_wav(b: &[u8], max_seconds: f64, mono: bool) -> Option<Audio> {
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
