//! `decode_image`: encoded bytes to RGB pixels, resized in the same pass
//! when a `resize_image` follows.
//!
//! Decoding turns the encoded bytes into RGB pixels with the EXIF
//! orientation applied (alpha is dropped, grey and palette images expanded,
//! a GIF gives its first frame). The header is read first: an image that
//! claims more than `limits.max_image_pixels` is rejected before a byte of
//! it is decoded. A JPEG with no end-of-image marker is rejected as
//! truncated rather than padded with grey.
//!
//! Resizing follows torchvision: the shorter side becomes `size` and the
//! longer `floor(size * long / short)`; `crop` then cuts a square, centred
//! (offsets rounded half to even, as Python's `round`) or at a random
//! offset drawn from the sample's generator. The filters are those of
//! Pillow (bicubic is Catmull-Rom), run by a SIMD resizer. A resize right
//! after a decode runs in the same pass over each image, so a batch never
//! holds full-size pixels.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BinaryBuilder, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{Filter, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::encode::EncodeImage;
use super::resize::{CropMode, ResizeFilter, ResizeImageConfig, check_resize};
use super::{PIXELS, pixel_fields, schema_with};
pub use crate::codec::image::{Decoded, decode};
use crate::codec::image::{decode_guarded, decode_into_guarded};
use crate::error::{Error, Result};
use crate::rejects::Rejection;
use crate::stages::StageConfig;
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};

use serde::{Deserialize, Serialize};

/// Decode the image bytes: EXIF orientation applied, converted to RGB.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeImageConfig {}

/// Resize (shorter side to `cfg.size`) and crop. `rng` draws a random crop.
pub fn resize_crop(
    resizer: &mut Resizer,
    rgb: &[u8],
    w: u32,
    h: u32,
    cfg: &ResizeImageConfig,
    max_pixels: u64,
    rng: &mut ChaCha8Rng,
) -> Decoded {
    let mut out = Vec::new();
    let (w, h) = resize_crop_into(resizer, rgb, w, h, cfg, max_pixels, rng, &mut out)?;
    out.truncate(w as usize * h as usize * 3);
    Ok((out, w, h))
}

/// [`resize_crop`] into `out`, which a caller keeps from image to image:
/// the pixels are `out[..width * height * 3]`.
#[allow(clippy::too_many_arguments)]
pub fn resize_crop_into(
    resizer: &mut Resizer,
    rgb: &[u8],
    w: u32,
    h: u32,
    cfg: &ResizeImageConfig,
    max_pixels: u64,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<u8>,
) -> std::result::Result<(u32, u32), Rejection> {
    let size = cfg.size as u64;
    let (nw, nh) = if w <= h {
        (size, (size * h as u64 / w as u64).max(1))
    } else {
        ((size * w as u64 / h as u64).max(1), size)
    };
    // A very long, thin image would resize to a huge one (only the crop is
    // ever resampled, but its geometry must still fit).
    let too_big = nw > u32::MAX as u64
        || nh > u32::MAX as u64
        || (cfg.crop.is_none() && nw * nh > max_pixels);
    if too_big {
        return Err((
            "too_many_pixels",
            format!(
                "{w} x {h} would resize to {nw} x {nh}, over limits.max_image_pixels = {max_pixels}"
            ),
        ));
    }
    let (nw, nh) = (nw as u32, nh as u32);
    // The crop, in the coordinates of the resized image.
    let (c, top, left) = match cfg.crop {
        None => (None, 0, 0),
        Some(c) => {
            let (top, left) = match cfg.crop_mode {
                CropMode::Center => (
                    ((nh - c) as f64 / 2.0).round_ties_even() as u32,
                    ((nw - c) as f64 / 2.0).round_ties_even() as u32,
                ),
                CropMode::Random => (rng.random_range(0..=nh - c), rng.random_range(0..=nw - c)),
            };
            (Some(c), top, left)
        }
    };
    let (out_w, out_h) = c.map_or((nw, nh), |c| (c, c));
    let n = out_w as usize * out_h as usize * 3;
    if out.len() < n {
        out.resize(n, 0);
    }
    if (nw, nh) == (w, h) {
        let row = (out_w * 3) as usize;
        for (y, dst) in (top..top + out_h).zip(out.chunks_exact_mut(row)) {
            let start = ((y * w + left) * 3) as usize;
            dst.copy_from_slice(&rgb[start..start + row]);
        }
        return Ok((out_w, out_h));
    }
    let src = ImageRef::new(w, h, rgb, PixelType::U8x3)
        .map_err(|e| ("corrupt_image", format!("pixels do not fit {w} x {h}: {e}")))?;
    let mut dst = Image::from_slice_u8(out_w, out_h, &mut out[..n], PixelType::U8x3)
        .map_err(|e| ("resize_failed", e.to_string()))?;
    let filter = FilterType::Custom(match cfg.filter {
        ResizeFilter::Bilinear => filter("bilinear", bilinear, 1.0),
        ResizeFilter::Bicubic => filter("catmull_rom", catmull_rom, 2.0),
        ResizeFilter::Lanczos => filter("lanczos3", lanczos3, 3.0),
    });
    // Only the part of the source that survives the crop is resampled; the
    // filter still reads the pixels around it, so the result is that of
    // resizing the whole image and cropping.
    let (sx, sy) = (w as f64 / nw as f64, h as f64 / nh as f64);
    let (x, y) = (left as f64 * sx, top as f64 * sy);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(filter))
        .crop(
            x,
            y,
            within(x, out_w as f64 * sx, w),
            within(y, out_h as f64 * sy, h),
        );
    resizer
        .resize(&src, &mut dst, &options)
        .map_err(|e| ("resize_failed", e.to_string()))?;
    Ok((out_w, out_h))
}

/// `len` from `start`, held within `limit`: rounding can put the far edge
/// of a crop box that reaches the image's edge a hair past it (224 * (225 /
/// 224) > 225), which the resizer refuses.
fn within(start: f64, len: f64, limit: u32) -> f64 {
    let mut len = len;
    while start + len > limit as f64 {
        len = len.next_down();
    }
    len
}

// The filters of fast_image_resize (Pillow's), except that a weight inside
// a window is never exactly 0. fast_image_resize 6.1 drops a window's
// leading zero weights; with a crop, the first window can then start after
// a later one, and its vertical-first pass subtracts past zero and reads
// outside the image (a small image upscaled and cropped: an 8 x 8 GIF to
// 24 x 24, cropped to 16, did). A weight of f64::MIN_POSITIVE becomes 0 in
// the crate's fixed-point coefficients, so the pixels are the same.

fn filter(name: &'static str, f: fn(f64) -> f64, support: f64) -> Filter {
    Filter::new(name, f, support).expect("a positive support")
}

fn never_zero(w: f64) -> f64 {
    if w == 0.0 { f64::MIN_POSITIVE } else { w }
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    never_zero(if x < 1.0 { 1.0 - x } else { 0.0 })
}

fn catmull_rom(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    never_zero(if x < 1.0 {
        ((A + 2.) * x - (A + 3.)) * x * x + 1.
    } else if x < 2.0 {
        (((x - 5.) * x + 8.) * x - 4.) * A
    } else {
        0.0
    })
}

fn lanczos3(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    never_zero(if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.)
    } else {
        0.0
    })
}

/// Decode, and resize and encode in the same pass when a `resize_image`
/// and an `encode_image` follow (their rejects, kinds `resize_failed` and
/// `encode_failed`, then carry the stage name `decode_image`).
pub struct DecodeImage {
    max_pixels: u64,
    resize: Option<ResizeImageConfig>,
    encode: Option<EncodeImage>,
}

impl DecodeImage {
    pub fn new(
        max_pixels: u64,
        resize: Option<ResizeImageConfig>,
        encode: Option<EncodeImage>,
    ) -> Self {
        DecodeImage {
            max_pixels,
            resize,
            encode,
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
        let (w, h) = decode_into_guarded(bytes, self.max_pixels, decoded)?;
        let mut px = (&decoded[..w as usize * h as usize * 3], w, h);
        if let Some(cfg) = &self.resize {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (w, h) =
                resize_crop_into(resizer, px.0, w, h, cfg, self.max_pixels, &mut rng, resized)?;
            px = (&resized[..w as usize * h as usize * 3], w, h);
        }
        let (rgb, w, h) = px;
        let out = match &self.encode {
            Some(encode) => encode.encode(rgb, w, h)?,
            None => rgb.to_vec(),
        };
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
        Ok(Built::Ready(Arc::new(DecodeImage::new(
            cx.limits.max_image_pixels,
            resize,
            encode,
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

    fn cfg(size: u32, crop: Option<u32>) -> ResizeImageConfig {
        ResizeImageConfig {
            size,
            crop,
            crop_mode: CropMode::Center,
            filter: ResizeFilter::Bilinear,
        }
    }

    #[test]
    fn shorter_side_becomes_size_and_the_longer_is_floored() {
        let rgb = vec![100u8; 30 * 20 * 3];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (out, w, h) = resize_crop(
            &mut Resizer::new(),
            &rgb,
            30,
            20,
            &cfg(7, None),
            64_000_000,
            &mut rng,
        )
        .unwrap();
        assert_eq!((w, h), (10, 7));
        assert_eq!(out.len(), 10 * 7 * 3);
        assert!(out.iter().all(|&p| p == 100), "a flat image stays flat");
    }

    #[test]
    fn resizing_only_the_crop_equals_resizing_then_cropping() {
        let (w, h) = (97u32, 61u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for filter in [
            ResizeFilter::Bilinear,
            ResizeFilter::Bicubic,
            ResizeFilter::Lanczos,
        ] {
            let resize = ResizeImageConfig {
                filter,
                ..cfg(40, None)
            };
            let (full, fw, _) = resize_crop(
                &mut Resizer::new(),
                &rgb,
                w,
                h,
                &resize,
                64_000_000,
                &mut rng,
            )
            .unwrap();
            let crop = ResizeImageConfig {
                filter,
                ..cfg(40, Some(32))
            };
            let (out, cw, ch) =
                resize_crop(&mut Resizer::new(), &rgb, w, h, &crop, 64_000_000, &mut rng).unwrap();
            assert_eq!((cw, ch), (32, 32));
            // 63 x 40 resized: left = round(15.5) = 16, top = round(4.0) = 4.
            let mut worst = 0;
            for y in 0..32 {
                for x in 0..32 * 3 {
                    let a = full[(((y + 4) * fw + 16) * 3 + x) as usize] as i32;
                    let b = out[(y * 32 * 3 + x) as usize] as i32;
                    worst = worst.max((a - b).abs());
                }
            }
            assert!(worst <= 1, "{filter:?}: off by {worst}");
        }
    }

    /// A crop box that reaches the edge of the image stays inside it,
    /// whatever the rounding: every shorter side from `size` up resizes,
    /// cropped or not (224 * (225 / 224) is more than 225 in floating point).
    #[test]
    fn every_shorter_side_resizes_without_its_box_leaving_the_image() {
        for (size, crop) in [(224, None), (224, Some(224)), (37, None), (37, Some(30))] {
            for short in size..size + 100 {
                for (w, h) in [(short, short), (short, short * 3 / 2)] {
                    let rgb = vec![7u8; (w * h * 3) as usize];
                    let mut rng = ChaCha8Rng::seed_from_u64(0);
                    let (out, ow, oh) = resize_crop(
                        &mut Resizer::new(),
                        &rgb,
                        w,
                        h,
                        &cfg(size, crop),
                        64_000_000,
                        &mut rng,
                    )
                    .unwrap_or_else(|e| panic!("{w} x {h} to {size} {crop:?}: {e:?}"));
                    assert_eq!(out.len(), (ow * oh * 3) as usize);
                    assert_eq!(out[out.len() / 2], 7, "{w} x {h}");
                }
            }
        }
    }

    /// fast_image_resize 6.1 with its own filters read outside the image
    /// here (an overflow in its first window; found by the `image` fuzz
    /// target): small images upscaled and cropped.
    #[test]
    fn small_images_upscaled_and_cropped_resize_like_resize_then_crop() {
        for (w, h, size, crop) in [
            (8, 8, 24, 16),
            (32, 32, 256, 224),
            (5, 3, 24, 16),
            (1, 9, 24, 16),
        ] {
            let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 53) % 241) as u8).collect();
            for filter in [
                ResizeFilter::Bilinear,
                ResizeFilter::Bicubic,
                ResizeFilter::Lanczos,
            ] {
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                let whole = ResizeImageConfig {
                    filter,
                    ..cfg(size, None)
                };
                let (full, fw, fh) = resize_crop(
                    &mut Resizer::new(),
                    &rgb,
                    w,
                    h,
                    &whole,
                    64_000_000,
                    &mut rng,
                )
                .unwrap();
                let cropped = ResizeImageConfig {
                    filter,
                    ..cfg(size, Some(crop))
                };
                let (out, _, _) = resize_crop(
                    &mut Resizer::new(),
                    &rgb,
                    w,
                    h,
                    &cropped,
                    64_000_000,
                    &mut rng,
                )
                .unwrap();
                let (top, left) = ((fh - crop) / 2, (fw - crop) / 2);
                let mut worst = 0;
                for y in 0..crop {
                    for x in 0..crop * 3 {
                        let a = full[(((y + top) * fw + left) * 3 + x) as usize] as i32;
                        let b = out[(y * crop * 3 + x) as usize] as i32;
                        worst = worst.max((a - b).abs());
                    }
                }
                assert!(worst <= 2, "{w} x {h} {filter:?}: off by {worst}");
            }
        }
    }

    /// The filters kiln passes are fast_image_resize's own, to the byte.
    #[test]
    fn the_filters_give_the_crates_own_pixels() {
        let (w, h) = (97u32, 61u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let src = ImageRef::new(w, h, &rgb, PixelType::U8x3).unwrap();
        for (theirs, ours) in [
            (FilterType::Bilinear, filter("bilinear", bilinear, 1.0)),
            (
                FilterType::CatmullRom,
                filter("catmull_rom", catmull_rom, 2.0),
            ),
            (FilterType::Lanczos3, filter("lanczos3", lanczos3, 3.0)),
        ] {
            let resized = |f| {
                let mut dst = Image::new(40, 25, PixelType::U8x3);
                let options = ResizeOptions::new()
                    .resize_alg(ResizeAlg::Convolution(f))
                    .crop(3.5, 2.25, 80.0, 50.0);
                Resizer::new().resize(&src, &mut dst, &options).unwrap();
                dst.into_vec()
            };
            assert_eq!(
                resized(theirs),
                resized(FilterType::Custom(ours)),
                "{theirs:?}"
            );
        }
    }

    #[test]
    fn centre_crop_rounds_half_to_even_like_torchvision() {
        // 5 x 4 image, size 4 -> 5 x 4 (no resize), crop 3: left = round(1.0) = 1,
        // top = round(0.5) = 0.
        let rgb: Vec<u8> = (0..5 * 4).flat_map(|i| [i as u8, 0, 0]).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (out, w, h) = resize_crop(
            &mut Resizer::new(),
            &rgb,
            5,
            4,
            &cfg(4, Some(3)),
            64_000_000,
            &mut rng,
        )
        .unwrap();
        assert_eq!((w, h), (3, 3));
        let reds: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, [1, 2, 3, 6, 7, 8, 11, 12, 13]);
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
    fn a_long_thin_image_is_refused_not_resized_to_gigabytes() {
        let rgb = vec![0u8; 100_000 * 3];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (kind, _) = resize_crop(
            &mut Resizer::new(),
            &rgb,
            1,
            100_000,
            &cfg(224, None),
            64_000_000,
            &mut rng,
        )
        .unwrap_err();
        assert_eq!(kind, "too_many_pixels");
        // With a crop only the crop is made.
        let (out, w, h) = resize_crop(
            &mut Resizer::new(),
            &rgb,
            1,
            100_000,
            &cfg(224, Some(224)),
            64_000_000,
            &mut rng,
        )
        .unwrap();
        assert_eq!((w, h, out.len()), (224, 224, 224 * 224 * 3));
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
