//! `encode_image`: decoded pixels stored as PNG or JPEG bytes.
//!
//! `encode_image` writes PNG (lossless, the default) or JPEG bytes into the
//! `image` column as `struct<bytes, path>`, which HuggingFace `datasets`
//! reads as its `Image` feature. JPEG is written by libjpeg-turbo (its SIMD
//! code) with 4:2:0 chroma and baseline Huffman tables: the bytes Pillow's
//! `save(quality=q)` and OpenCV's `imencode` write for the same pixels.
//! `to_tensor` writes `pixel_values`, a
//! `[3][height][width]` nest of fixed-size float32 lists (one contiguous
//! CHW block a row), normalised as `(pixel - mean) / std`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, SchemaRef};
use image::ImageEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use rayon::prelude::*;

use super::{HEIGHT, PIXELS, Pixels, WIDTH, require_pixels, schema_with};
use crate::codec::image::grown;
use crate::error::Result;
use crate::rejects::Rejection;
use crate::schema::{media_struct_column, media_struct_type};
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageCodec {
    #[default]
    Png,
    Jpeg,
}

/// Store the pixels as encoded image bytes in the `image` column, the layout
/// HuggingFace `datasets` reads as its `Image` feature.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeImageConfig {
    #[serde(default)]
    pub format: ImageCodec,
    /// JPEG quality, 1-100.
    #[serde(default = "default_quality")]
    pub quality: u8,
}

fn default_quality() -> u8 {
    90
}

pub(super) const PIXEL_COLUMNS: [&str; 3] = [PIXELS, WIDTH, HEIGHT];

pub struct EncodeImage {
    cfg: EncodeImageConfig,
}

impl EncodeImage {
    pub fn new(cfg: &EncodeImageConfig) -> std::result::Result<Self, String> {
        if !(1..=100).contains(&cfg.quality) {
            return Err("quality must be within 1..=100".into());
        }
        Ok(EncodeImage { cfg: cfg.clone() })
    }
}

/// Encode RGB8 pixels.
pub fn encode(
    rgb: &[u8],
    w: u32,
    h: u32,
    codec: ImageCodec,
    quality: u8,
) -> std::result::Result<Vec<u8>, String> {
    if rgb.len() as u64 != w as u64 * h as u64 * 3 {
        return Err(format!("{} bytes are not {w} x {h} RGB pixels", rgb.len()));
    }
    match codec {
        ImageCodec::Png => {
            let mut out = Vec::new();
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
                .write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| e.to_string())?;
            Ok(out)
        }
        ImageCodec::Jpeg => JPEG.with_borrow_mut(|jpeg| jpeg.encode(rgb, w, h, quality)),
    }
}

thread_local! {
    /// Each thread's JPEG encoder, kept with its output buffer.
    static JPEG: std::cell::RefCell<Jpeg> = const { std::cell::RefCell::new(Jpeg { compressor: None, buf: Vec::new() }) };
}

/// libjpeg-turbo's compressor and a buffer of its worst-case output size,
/// reused from image to image.
struct Jpeg {
    compressor: Option<turbojpeg::Compressor>,
    buf: Vec<u8>,
}

/// A buffer kept between images stays under this (a bigger image gets one
/// of its own).
const KEPT_BUFFER: usize = 16 << 20;

impl Jpeg {
    fn encode(&mut self, rgb: &[u8], w: u32, h: u32, quality: u8) -> Result<Vec<u8>, String> {
        if w > 65535 || h > 65535 {
            return Err(format!("{w} x {h} is larger than JPEG allows (65535)"));
        }
        let tj = |e: turbojpeg::Error| format!("libjpeg-turbo: {e}");
        let compressor = match &mut self.compressor {
            Some(c) => c,
            None => {
                let mut c = turbojpeg::Compressor::new().map_err(tj)?;
                // Chroma at half resolution both ways (4:2:0), as Pillow and
                // OpenCV write JPEGs by default.
                c.set_subsamp(turbojpeg::Subsamp::Sub2x2).map_err(tj)?;
                self.compressor.insert(c)
            }
        };
        compressor.set_quality(quality as i32).map_err(tj)?;
        let (w, h) = (w as usize, h as usize);
        let need = compressor.buf_len(w, h).map_err(tj)?;
        let image = turbojpeg::Image {
            pixels: rgb,
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        let mut own = Vec::new();
        let buf = if need > KEPT_BUFFER {
            &mut own
        } else {
            &mut self.buf
        };
        let n = compressor
            .compress_to_slice(image, grown(buf, need))
            .map_err(tj)?;
        Ok(buf[..n].to_vec())
    }
}

impl Stage for EncodeImage {
    fn name(&self) -> &str {
        "encode_image"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        require_pixels(input, "encode_image")?;
        Ok(schema_with(
            input,
            &PIXEL_COLUMNS,
            &[Field::new("image", media_struct_type(), false)],
        ))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let px = Pixels::of(&batch)?;
        let encoded: Vec<_> = (0..batch.num_rows())
            .into_par_iter()
            .map(|row| {
                let (rgb, w, h) = px.get(row);
                self.encode(rgb, w, h)
            })
            .collect();
        self.finish(batch, encoded, cx, self)
    }
}

impl EncodeImage {
    /// One image's pixels encoded, or why not.
    pub fn encode(&self, rgb: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, Rejection> {
        encode(rgb, w, h, self.cfg.format, self.cfg.quality).map_err(|m| ("encode_failed", m))
    }

    /// The `image` column of the rows encoded, rejecting the failures, in
    /// the output of `stage` (this one, or the decode it runs in).
    pub(super) fn finish(
        &self,
        batch: RecordBatch,
        encoded: Vec<std::result::Result<Vec<u8>, Rejection>>,
        cx: &mut BatchContext,
        stage: &dyn Stage,
    ) -> Result<RecordBatch> {
        let (batch, encoded) = super::keep_ok(batch, encoded, cx)?;
        let image = media_struct_column(&batch, encoded)?;
        let schema = stage.output_schema(&batch.schema())?;
        super::batch_with(&batch, &schema, vec![("image", image)])
    }
}

impl BuildStage for EncodeImageConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        let stage = EncodeImage::new(self).map_err(|m| BuildError::new("quality", m))?;
        if super::decode::encode_is_fused(cx.before) {
            return Ok(Built::Fused);
        }
        Ok(Built::Ready(Arc::new(stage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A photo-like test image: smooth colour gradients and some texture.
    fn photo(w: u32, h: u32) -> Vec<u8> {
        let mut px = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let t = ((x * 7 + y * 13) % 17) as f32;
                px.push((x * 255 / w) as u8);
                px.push((y * 255 / h) as u8);
                px.push((128.0 + 40.0 * ((x as f32) / 9.0).sin() + t) as u8);
            }
        }
        px
    }

    #[test]
    fn jpeg_decodes_close_to_its_pixels_with_420_chroma() {
        let (w, h) = (224, 160);
        let rgb = photo(w, h);
        let bytes = encode(&rgb, w, h, ImageCodec::Jpeg, 90).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (w, h));
        let mse: f64 = rgb
            .iter()
            .zip(back.as_raw())
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            / rgb.len() as f64;
        let psnr = 10.0 * (255.0f64 * 255.0 / mse).log10();
        assert!(psnr > 35.0, "PSNR {psnr:.1} dB");
        // SOF0: the luma component samples 2x2, the chroma ones 1x1.
        let sof = bytes.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        let components = &bytes[sof + 10..sof + 19];
        assert_eq!(
            [components[1], components[4], components[7]],
            [0x22, 0x11, 0x11]
        );
    }

    #[test]
    fn jpeg_past_its_size_limit_is_an_error_not_a_panic() {
        let err = encode(&[0; 3 * 70_000], 70_000, 1, ImageCodec::Jpeg, 90).unwrap_err();
        assert!(err.contains("65535"), "{err}");
    }
}
