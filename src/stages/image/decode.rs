//! `decode_image` and `resize_image`.
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

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BinaryBuilder, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{PIXELS, Pixels, pixel_fields, require_pixels, schema_with};
use crate::config::{CropMode, ResizeFilter, ResizeImageConfig};
use crate::error::{Error, Result};
use crate::stages::{BatchContext, Stage};

use crate::rejects::Rejection;

/// Pixels `(rgb, width, height)`, or why not.
pub type Decoded = std::result::Result<(Vec<u8>, u32, u32), Rejection>;

/// Decode encoded image bytes to RGB8, orientation applied.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Decoded {
    if bytes.is_empty() {
        return Err(("empty_file", "the file is empty".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ("unreadable_image", e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err((
            "unknown_format",
            "the bytes are not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"
                .into(),
        ));
    };
    if format == ImageFormat::Jpeg && !ends_jpeg(bytes) {
        return Err((
            "truncated",
            "the JPEG has no end-of-image marker: the file is cut short".into(),
        ));
    }
    // Bound what the decoder may allocate, whatever the header says.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err((
            "too_many_pixels",
            format!(
                "the image claims {w} x {h} = {pixels} pixels, over limits.max_image_pixels = {max_pixels}"
            ),
        ));
    }
    if pixels == 0 {
        return Err(("empty_image", format!("the image is {w} x {h}")));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(classify)?;
    img.apply_orientation(orientation);
    let (w, h) = (img.width(), img.height());
    Ok((img.into_rgb8().into_raw(), w, h))
}

/// [`decode`], with a decoder's panic on hostile bytes made a reject.
fn decode_guarded(bytes: &[u8], max_pixels: u64) -> Decoded {
    std::panic::catch_unwind(|| decode(bytes, max_pixels)).unwrap_or_else(|_| {
        Err((
            "corrupt_image",
            "the decoder failed on these bytes (it panicked)".into(),
        ))
    })
}

/// Whether a JPEG ends with its end-of-image marker (trailing padding of a
/// few bytes is allowed, as writers leave it).
fn ends_jpeg(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn classify(e: ImageError) -> Rejection {
    match &e {
        ImageError::Limits(_) => ("too_many_pixels", format!("over the decoding limits: {e}")),
        ImageError::Unsupported(_) => ("unsupported_image", e.to_string()),
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ("truncated", format!("the file is cut short: {e}"))
        }
        _ => ("corrupt_image", e.to_string()),
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
    if (nw, nh) == (w, h) {
        let mut out = Vec::with_capacity((out_w * out_h * 3) as usize);
        for y in top..top + out_h {
            let start = ((y * w + left) * 3) as usize;
            out.extend_from_slice(&rgb[start..start + (out_w * 3) as usize]);
        }
        return Ok((out, out_w, out_h));
    }
    let src = ImageRef::new(w, h, rgb, PixelType::U8x3)
        .map_err(|e| ("corrupt_image", format!("pixels do not fit {w} x {h}: {e}")))?;
    let mut dst = Image::new(out_w, out_h, PixelType::U8x3);
    let filter = match cfg.filter {
        ResizeFilter::Bilinear => FilterType::Bilinear,
        ResizeFilter::Bicubic => FilterType::CatmullRom,
        ResizeFilter::Lanczos => FilterType::Lanczos3,
    };
    // Only the part of the source that survives the crop is resampled; the
    // filter still reads the pixels around it, so the result is that of
    // resizing the whole image and cropping.
    let (sx, sy) = (w as f64 / nw as f64, h as f64 / nh as f64);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(filter))
        .crop(
            left as f64 * sx,
            top as f64 * sy,
            out_w as f64 * sx,
            out_h as f64 * sy,
        );
    resizer
        .resize(&src, &mut dst, &options)
        .map_err(|e| ("resize_failed", e.to_string()))?;
    Ok((dst.into_vec(), out_w, out_h))
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

/// Decode, and resize in the same pass when a `resize_image` follows (its
/// rejects, kind `resize_failed`, then carry the stage name `decode_image`).
pub struct DecodeStage {
    max_pixels: u64,
    resize: Option<ResizeImageConfig>,
}

impl DecodeStage {
    pub fn new(max_pixels: u64, resize: Option<ResizeImageConfig>) -> Self {
        DecodeStage { max_pixels, resize }
    }
}

fn out_size(resize: &Option<ResizeImageConfig>) -> Option<(u32, u32)> {
    resize.as_ref().and_then(|r| r.crop).map(|c| (c, c))
}

impl Stage for DecodeStage {
    fn name(&self) -> &str {
        "decode_image"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        if input.field_with_name("_image").is_err() {
            return Err(Error::Config(
                "decode_image needs encoded images: the inputs must be images, tar shards or tables with `image_column`".into(),
            ));
        }
        Ok(schema_with(
            input,
            &["_image"],
            &pixel_fields(out_size(&self.resize)),
        ))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let images = batch
            .column_by_name("_image")
            .ok_or_else(|| Error::Execution("decode_image: no `_image` column".into()))?
            .as_binary::<i32>();
        let seeds = super::sample_seeds(&batch, cx)?;
        let results: Vec<_> = (0..batch.num_rows())
            .into_par_iter()
            .map_init(Resizer::new, |resizer, row| {
                let (rgb, w, h) = decode_guarded(images.value(row), self.max_pixels)?;
                match &self.resize {
                    None => Ok((rgb, w, h)),
                    Some(cfg) => {
                        let mut rng = ChaCha8Rng::seed_from_u64(seeds[row]);
                        resize_crop(resizer, &rgb, w, h, cfg, self.max_pixels, &mut rng)
                    }
                }
            })
            .collect();
        finish(batch, results, cx, self)
    }
}

/// Build the output batch from per-row results, rejecting the failures.
fn finish(
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

/// `resize_image` on its own, on pixels an earlier stage decoded.
pub struct ResizeStage {
    cfg: ResizeImageConfig,
    max_pixels: u64,
}

impl ResizeStage {
    pub fn new(cfg: ResizeImageConfig, max_pixels: u64) -> Self {
        ResizeStage { cfg, max_pixels }
    }
}

impl Stage for ResizeStage {
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
