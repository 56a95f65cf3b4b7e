//! `resize_image`: the shorter side to `size`, then an optional square crop.
//! A resize right after a `decode_image` is run by that decode, in the same
//! pass over each image.
//!
//! Resizing follows torchvision: the shorter side becomes `size` and the
//! longer `floor(size * long / short)`; `crop` then cuts a square, centred
//! (offsets rounded half to even, as Python's `round`) or at a random
//! offset drawn from the sample's generator. The filters are those of
//! Pillow (bicubic is Catmull-Rom), run by a SIMD resizer over only the
//! part of the image the crop keeps.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{Filter, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::decode::{finish, out_size};
use super::{Pixels, pixel_fields, require_pixels, schema_with};
use crate::codec::image::{Decoded, Decoding, grown};
use crate::error::Result;
use crate::rejects::Rejection;
use crate::stages::{
    BatchContext, BuildContext, BuildError, BuildStage, Built, Stage, StageConfig,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    Bilinear,
    #[default]
    Bicubic,
    Lanczos,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CropMode {
    #[default]
    Center,
    Random,
}

/// Resize so that the shorter side is `size`, then optionally crop a
/// `crop` x `crop` square, as torchvision's `Resize` + `CenterCrop` /
/// `RandomCrop` do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeImageConfig {
    pub size: u32,
    #[serde(default)]
    pub crop: Option<u32>,
    #[serde(default)]
    pub crop_mode: CropMode,
    #[serde(default)]
    pub filter: ResizeFilter,
}

/// Check a resize config; the message names what is wrong.
pub fn check_resize(cfg: &ResizeImageConfig) -> std::result::Result<(), String> {
    if cfg.size == 0 {
        return Err("size must be at least 1".into());
    }
    match cfg.crop {
        Some(0) => Err("crop must be at least 1".into()),
        Some(c) if c > cfg.size => Err(format!(
            "crop = {c} is larger than size = {}: the shorter side would be too short to crop",
            cfg.size
        )),
        _ => Ok(()),
    }
}

impl BuildStage for ResizeImageConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        check_resize(self).map_err(|m| BuildError::new("size", m))?;
        if matches!(cx.before.last(), Some(StageConfig::DecodeImage(_))) {
            return Ok(Built::Fused);
        }
        Ok(Built::Ready(Arc::new(ResizeImage::new(
            self.clone(),
            cx.limits.max_image_pixels,
        ))))
    }
}

/// `resize_image` on its own, on pixels an earlier stage decoded.
pub struct ResizeImage {
    cfg: ResizeImageConfig,
    max_pixels: u64,
}

impl ResizeImage {
    pub fn new(cfg: ResizeImageConfig, max_pixels: u64) -> Self {
        ResizeImage { cfg, max_pixels }
    }
}

impl Stage for ResizeImage {
    fn name(&self) -> &str {
        "resize_image"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        require_pixels(input, "resize_image")?;
        Ok(schema_with(
            input,
            &[],
            &pixel_fields(out_size(&Some(self.cfg.clone()))),
        ))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let px = Pixels::of(&batch)?;
        let seeds = super::sample_seeds(&batch, cx)?;
        let results: Vec<_> = (0..batch.num_rows())
            .into_par_iter()
            .map_init(Resizer::new, |resizer, row| {
                let (rgb, w, h) = px.get(row);
                let mut rng = ChaCha8Rng::seed_from_u64(seeds[row]);
                resize_crop(resizer, rgb, w, h, &self.cfg, self.max_pixels, &mut rng)
            })
            .collect();
        finish(batch, results, cx, self)
    }
}

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
    // A new buffer grows to exactly the pixels.
    let mut out = Vec::new();
    let src = Decoding::whole(w, h);
    let (w, h) = resize_crop_into(resizer, rgb, src, cfg, max_pixels, rng, &mut out)?;
    Ok((out, w, h))
}

/// [`resize_crop`] into `out`, which a caller keeps from image to image:
/// the pixels are `out[..width * height * 3]`. The geometry (the resized
/// size, the crop) is that of the image's full size; its pixels `rgb` may
/// be a reduced DCT scale of it.
pub fn resize_crop_into(
    resizer: &mut Resizer,
    rgb: &[u8],
    src: Decoding,
    cfg: &ResizeImageConfig,
    max_pixels: u64,
    rng: &mut ChaCha8Rng,
    out: &mut Vec<u8>,
) -> std::result::Result<(u32, u32), Rejection> {
    let (w, h) = src.full;
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
    let out = grown(out, out_w as usize * out_h as usize * 3);
    if (nw, nh) == (w, h) && src.scale == 1 {
        let row = (out_w * 3) as usize;
        for (y, dst) in (top..top + out_h).zip(out.chunks_exact_mut(row)) {
            let start = ((y * w + left) * 3) as usize;
            dst.copy_from_slice(&rgb[start..start + row]);
        }
        return Ok((out_w, out_h));
    }
    let (sw, sh) = (src.width, src.height);
    let src_image = ImageRef::new(sw, sh, rgb, PixelType::U8x3).map_err(|e| {
        (
            "corrupt_image",
            format!("pixels do not fit {sw} x {sh}: {e}"),
        )
    })?;
    let mut dst = Image::from_slice_u8(out_w, out_h, out, PixelType::U8x3)
        .map_err(|e| ("resize_failed", e.to_string()))?;
    let filter = FilterType::Custom(match cfg.filter {
        ResizeFilter::Bilinear => filter("bilinear", bilinear, 1.0),
        ResizeFilter::Bicubic => filter("catmull_rom", catmull_rom, 2.0),
        ResizeFilter::Lanczos => filter("lanczos3", lanczos3, 3.0),
    });
    // Only the part of the source that survives the crop is resampled; the
    // filter still reads the pixels around it, so the result is that of
    // resizing the whole image and cropping. A pixel of a reduced DCT
    // scale 1/s covers s x s of the full image's.
    let s = src.scale as f64;
    let (sx, sy) = (w as f64 / nw as f64 / s, h as f64 / nh as f64 / s);
    let (x, y) = (left as f64 * sx, top as f64 * sy);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(filter))
        .crop(
            x,
            y,
            within(x, out_w as f64 * sx, sw),
            within(y, out_h as f64 * sy, sh),
        );
    resizer
        .resize(&src_image, &mut dst, &options)
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

/// A bilinear resize to `size`, cropped in the centre (for tests).
#[cfg(test)]
pub(super) fn cfg(size: u32, crop: Option<u32>) -> ResizeImageConfig {
    ResizeImageConfig {
        size,
        crop,
        crop_mode: CropMode::Center,
        filter: ResizeFilter::Bilinear,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The largest difference of a channel between resizing only the crop
    /// and resizing the whole image to `size`, then cutting the `crop`
    /// square at `corner(width, height)` (top, left) of the whole.
    fn crop_against_whole(
        rgb: &[u8],
        (w, h): (u32, u32),
        filter: ResizeFilter,
        (size, crop): (u32, u32),
        corner: impl Fn(u32, u32) -> (u32, u32),
    ) -> i32 {
        let resize = |crop| {
            let cfg = ResizeImageConfig {
                filter,
                ..cfg(size, crop)
            };
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            resize_crop(&mut Resizer::new(), rgb, w, h, &cfg, 64_000_000, &mut rng).unwrap()
        };
        let (full, fw, fh) = resize(None);
        let (out, cw, ch) = resize(Some(crop));
        assert_eq!((cw, ch), (crop, crop));
        let (top, left) = corner(fw, fh);
        let mut worst = 0;
        for y in 0..crop {
            for x in 0..crop * 3 {
                let a = full[(((y + top) * fw + left) * 3 + x) as usize] as i32;
                let b = out[(y * crop * 3 + x) as usize] as i32;
                worst = worst.max((a - b).abs());
            }
        }
        worst
    }

    #[test]
    fn resizing_only_the_crop_equals_resizing_then_cropping() {
        let (w, h) = (97u32, 61u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        for filter in [
            ResizeFilter::Bilinear,
            ResizeFilter::Bicubic,
            ResizeFilter::Lanczos,
        ] {
            // 63 x 40 resized: left = round(15.5) = 16, top = round(4.0) = 4.
            let worst = crop_against_whole(&rgb, (w, h), filter, (40, 32), |_, _| (4, 16));
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
                let centre = |fw, fh| ((fh - crop) / 2, (fw - crop) / 2);
                let worst = crop_against_whole(&rgb, (w, h), filter, (size, crop), centre);
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
}
