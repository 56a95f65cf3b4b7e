//! `decode_image`: encoded bytes to RGB pixels, resized and encoded in the
//! same pass when a `resize_image` and an `encode_image` follow.
//!
//! Decoding turns the encoded bytes into RGB pixels with the EXIF
//! orientation applied (alpha is dropped, grey and palette images expanded,
//! a GIF gives its first frame). The header is read first: an image that
//! claims more than `limits.max_image_pixels` is rejected before a byte of
//! it is decoded. A JPEG with no end-of-image marker is rejected as
//! truncated rather than padded with grey.
//!
//! A resize right after a decode runs in the same pass over each image, so
//! a batch never holds full-size pixels, and so does an `encode_image`
//! right after either. With `draft = true` a JPEG is decoded at the
//! smallest DCT scale (libjpeg-turbo's 1/2, 1/4 or 1/8) that keeps its
//! shorter side at least the resize's `size`; the resize then maps its
//! geometry (the resized size, the crop) onto those pixels, so the output
//! has the size and crop of full decoding.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BinaryBuilder, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use fast_image_resize::Resizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::encode::EncodeImage;
use super::resize::{ResizeImageConfig, check_resize, resize_crop_into};
use super::{PIXELS, pixel_fields, schema_with};
pub use crate::codec::image::{Decoded, decode};
use crate::codec::image::{decode_guarded, decode_into_guarded};
use crate::error::{Error, Result};
use crate::stages::StageConfig;
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};

use serde::{Deserialize, Serialize};

/// Decode the image bytes: EXIF orientation applied, converted to RGB.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeImageConfig {
    /// Decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) that keeps the
    /// shorter side at least the `size` of the `resize_image` right after,
    /// as Pillow's `draft` does: much faster on large photos, slightly
    /// different pixels. Off: every image is decoded in full.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draft: bool,
}

/// Decode, and resize and encode in the same pass when a `resize_image`
/// and an `encode_image` follow (their rejects, kinds `resize_failed` and
/// `encode_failed`, then carry the stage name `decode_image`).
pub struct DecodeImage {
    max_pixels: u64,
    resize: Option<ResizeImageConfig>,
    encode: Option<EncodeImage>,
    /// JPEGs at a reduced DCT scale (with a resize only).
    draft: bool,
}

impl DecodeImage {
    pub fn new(
        max_pixels: u64,
        resize: Option<ResizeImageConfig>,
        encode: Option<EncodeImage>,
        draft: bool,
    ) -> Self {
        DecodeImage {
            max_pixels,
            resize,
            encode,
            draft,
        }
    }

    /// One image through the fused stages, in the thread's kept buffers:
    /// only what leaves the stage (the resized pixels, or their encoding)
    /// is a new allocation.
    fn run_one(&self, bytes: &[u8], seed: u64, kept: &mut Kept) -> Decoded {
        let Kept {
            resizer,
            decoded,
            resized,
        } = kept;
        let draft = self.resize.as_ref().filter(|_| self.draft).map(|r| r.size);
        let d = decode_into_guarded(bytes, self.max_pixels, draft, decoded)?;
        let rgb = &decoded[..d.bytes()];
        let Some(cfg) = &self.resize else {
            let out = match &self.encode {
                Some(encode) => encode.encode(rgb, d.width, d.height)?,
                None => rgb.to_vec(),
            };
            return Ok((out, d.width, d.height));
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let Some(encode) = &self.encode else {
            // The crop leaves the stage: made in a buffer of its own.
            let mut out = Vec::new();
            let (w, h) =
                resize_crop_into(resizer, rgb, d, cfg, self.max_pixels, &mut rng, &mut out)?;
            return Ok((out, w, h));
        };
        let (w, h) = resize_crop_into(resizer, rgb, d, cfg, self.max_pixels, &mut rng, resized)?;
        let out = encode.encode(&resized[..w as usize * h as usize * 3], w, h)?;
        Ok((out, w, h))
    }
}

/// What a thread keeps between images: the resizer and the buffers of the
/// decoded and the resized pixels, each dropped when it grew past
/// [`KEPT_BYTES`].
#[derive(Default)]
struct Kept {
    resizer: Resizer,
    decoded: Vec<u8>,
    resized: Vec<u8>,
}

/// A kept buffer larger than this (a 10-megapixel image) is freed after
/// its image, so that a thread holds at most this much between images.
const KEPT_BYTES: usize = 32 << 20;

thread_local! {
    static KEPT: std::cell::RefCell<Kept> = std::cell::RefCell::default();
}

pub(super) fn out_size(resize: &Option<ResizeImageConfig>) -> Option<(u32, u32)> {
    resize.as_ref().and_then(|r| r.crop).map(|c| (c, c))
}

impl Stage for DecodeImage {
    fn name(&self) -> &str {
        "decode_image"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        if input.field_with_name("_image").is_err() {
            return Err(Error::Config(
                "decode_image needs encoded images: the inputs must be images, tar shards or tables with `image_column`".into(),
            ));
        }
        let pixels = schema_with(input, &["_image"], &pixel_fields(out_size(&self.resize)));
        match &self.encode {
            Some(encode) => encode.output_schema(&pixels),
            None => Ok(pixels),
        }
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let images = batch
            .column_by_name("_image")
            .ok_or_else(|| Error::Internal("decode_image: no `_image` column".into()))?
            .as_binary::<i32>();
        let results: Vec<_> = if self.resize.is_none() && self.encode.is_none() {
            // The decoded pixels are the output: nothing to keep.
            (0..batch.num_rows())
                .into_par_iter()
                .map(|row| decode_guarded(images.value(row), self.max_pixels))
                .collect()
        } else {
            let seeds = super::sample_seeds(&batch, cx)?;
            (0..batch.num_rows())
                .into_par_iter()
                .map(|row| {
                    let (bytes, seed) = (images.value(row), seeds[row]);
                    KEPT.with(|kept| match kept.try_borrow_mut() {
                        Ok(mut kept) => {
                            let kept = &mut *kept;
                            let out = self.run_one(bytes, seed, kept);
                            for buf in [&mut kept.decoded, &mut kept.resized] {
                                if buf.len() > KEPT_BYTES {
                                    *buf = Vec::new();
                                }
                            }
                            out
                        }
                        // Only if the thread is already inside an image
                        // (work stolen while it waits): buffers of its own.
                        Err(_) => self.run_one(bytes, seed, &mut Kept::default()),
                    })
                })
                .collect()
        };
        match &self.encode {
            Some(encode) => {
                let encoded = results.into_iter().map(|r| r.map(|(bytes, _, _)| bytes));
                encode.finish(batch, encoded.collect(), cx, self)
            }
            None => finish(batch, results, cx, self),
        }
    }
}

/// Build the output batch from per-row results, rejecting the failures.
pub(super) fn finish(
    batch: RecordBatch,
    results: Vec<Decoded>,
    cx: &mut BatchContext,
    stage: &dyn Stage,
) -> Result<RecordBatch> {
    let (batch, decoded) = super::keep_ok(batch, results, cx)?;
    let mut pixels = BinaryBuilder::new();
    let (mut ws, mut hs) = (Vec::new(), Vec::new());
    for (rgb, w, h) in decoded {
        pixels.append_value(&rgb);
        ws.push(w);
        hs.push(h);
    }
    let schema = stage.output_schema(&batch.schema())?;
    super::batch_with(
        &batch,
        &schema,
        vec![
            (PIXELS, Arc::new(pixels.finish()) as ArrayRef),
            (super::WIDTH, Arc::new(UInt32Array::from(ws))),
            (super::HEIGHT, Arc::new(UInt32Array::from(hs))),
        ],
    )
}

impl BuildStage for DecodeImageConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        // A resize right after runs in the same pass over each image, and
        // so does an encode_image right after the decode or that resize.
        let resize = match cx.after.first() {
            Some(StageConfig::ResizeImage(r)) if check_resize(r).is_ok() => Some(r.clone()),
            _ => None,
        };
        let encode = match &cx.after[resize.is_some() as usize..] {
            [StageConfig::EncodeImage(e), ..] => EncodeImage::new(e).ok(),
            _ => None,
        };
        if self.draft && !matches!(cx.after.first(), Some(StageConfig::ResizeImage(_))) {
            return Err(BuildError::new(
                "draft",
                "draft needs a resize_image right after decode_image: it decodes at the scale that resize allows",
            ));
        }
        Ok(Built::Ready(Arc::new(DecodeImage::new(
            cx.limits.max_image_pixels,
            resize,
            encode,
            self.draft,
        ))))
    }
}

/// Whether an `encode_image` written after `before` runs inside its
/// `decode_image` (as [`DecodeImageConfig`]'s build decides).
pub(super) fn encode_is_fused(before: &[StageConfig]) -> bool {
    match before {
        [.., StageConfig::DecodeImage(_)] => true,
        [.., StageConfig::DecodeImage(_), StageConfig::ResizeImage(r)] => check_resize(r).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::image::resize::{cfg, resize_crop};

    /// `draft`: a JPEG decoded at a reduced DCT scale resizes to the size
    /// and crop of full decoding, with nearly its pixels.
    #[test]
    fn a_draft_decode_has_the_geometry_of_full_decoding_and_nearly_its_pixels() {
        use super::super::encode::{ImageCodec, encode};
        use crate::codec::image::decode_into;
        let (w, h) = (640u32, 480u32);
        let rgb: Vec<u8> = (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| {
                    let (xf, yf) = (x as f32, y as f32);
                    [
                        (128.0 + 100.0 * (xf / 17.0).sin()) as u8,
                        (128.0 + 100.0 * (yf / 23.0).cos()) as u8,
                        ((x + y) * 255 / (w + h)) as u8,
                    ]
                })
            })
            .collect();
        let jpeg = encode(&rgb, w, h, ImageCodec::Jpeg, 95).unwrap();
        let (full, _, _) = decode(&jpeg, 64_000_000).unwrap();
        let mut buf = Vec::new();
        for (size, crop, scale) in [
            (64, Some(56), 4),
            (100, None, 4),
            (200, Some(200), 2),
            (59, Some(50), 8),
        ] {
            let d = decode_into(&jpeg, 64_000_000, Some(size), &mut buf).unwrap();
            assert_eq!((d.scale, d.full), (scale, (w, h)), "size {size}");
            assert_eq!((d.width, d.height), (w.div_ceil(scale), h.div_ceil(scale)));
            let cfg = cfg(size, crop);
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let (want, ww, wh) =
                resize_crop(&mut Resizer::new(), &full, w, h, &cfg, 64_000_000, &mut rng).unwrap();
            let mut out = Vec::new();
            let got = resize_crop_into(
                &mut Resizer::new(),
                &buf[..d.bytes()],
                d,
                &cfg,
                64_000_000,
                &mut rng,
                &mut out,
            )
            .unwrap();
            assert_eq!(got, (ww, wh), "size {size}");
            let mse = want
                .iter()
                .zip(&out)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum::<f64>()
                / want.len() as f64;
            let psnr = 10.0 * (255.0f64.powi(2) / mse).log10();
            assert!(psnr > 40.0, "size {size} at 1/{scale}: PSNR {psnr:.1} dB");
        }
        // Not a JPEG, or too small to scale: decoded in full.
        let png = include_bytes!("../../../fixtures/images/folder/dog/dog_1.png");
        assert_eq!(
            decode_into(png, 64_000_000, Some(8), &mut buf)
                .unwrap()
                .scale,
            1
        );
        assert_eq!(
            decode_into(&jpeg, 64_000_000, Some(300), &mut buf)
                .unwrap()
                .scale,
            1
        );
    }

    /// A draft decode applies the EXIF orientation: stored 32 x 48 (left
    /// red, right blue), shown 48 wide and 32 high, top red, bottom blue.
    #[test]
    fn a_draft_decode_is_oriented() {
        use crate::codec::image::decode_into;
        let jpg = include_bytes!("../../../fixtures/images/folder/cat/rotated.jpg");
        let mut buf = Vec::new();
        let d = decode_into(jpg, 64_000_000, Some(8), &mut buf).unwrap();
        assert_eq!((d.width, d.height, d.full, d.scale), (12, 8, (48, 32), 4));
        let mut out = Vec::new();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (w, h) = resize_crop_into(
            &mut Resizer::new(),
            &buf[..d.bytes()],
            d,
            &cfg(8, None),
            64_000_000,
            &mut rng,
            &mut out,
        )
        .unwrap();
        assert_eq!((w, h), (12, 8));
        let at =
            |x: u32, y: u32| &out[((y * 12 + x) * 3) as usize..((y * 12 + x) * 3 + 3) as usize];
        assert!(
            at(6, 1)[0] > 200 && at(6, 1)[2] < 60,
            "top is red: {:?}",
            at(6, 1)
        );
        assert!(
            at(6, 6)[2] > 200 && at(6, 6)[0] < 60,
            "bottom is blue: {:?}",
            at(6, 6)
        );
    }

    #[test]
    fn bomb_header_is_rejected_before_decoding() {
        // A valid PNG that claims 100000 x 100000 pixels, with a tiny IDAT.
        let png = include_bytes!("../../../fixtures/images/bad/bomb.png");
        let (kind, msg) = decode(png, 64_000_000).unwrap_err();
        assert_eq!(kind, "too_many_pixels", "{msg}");
        assert!(msg.contains("100000 x 100000"), "{msg}");
    }

    #[test]
    fn gif_gives_its_first_frame() {
        let gif = include_bytes!("../../../fixtures/images/folder/cat/cat_2.gif");
        let (rgb, w, h) = decode(gif, 64_000_000).unwrap();
        assert_eq!((w, h), (56, 40));
        // As Pillow reads frame 0: a dark disc in the middle (frame 1 has a
        // yellow bar there) on a light corner (teal in frame 1).
        let at = |x: usize, y: usize| &rgb[(y * 56 + x) * 3..(y * 56 + x) * 3 + 3];
        assert_eq!(at(28, 20), [40, 30, 30]);
        assert_eq!(at(0, 0), [250, 190, 120]);
    }

    #[test]
    fn jpeg_without_end_marker_is_truncated() {
        let jpg = include_bytes!("../../../fixtures/images/bad/truncated.jpg");
        assert_eq!(decode(jpg, 64_000_000).unwrap_err().0, "truncated");
    }
}
