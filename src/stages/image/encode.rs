//! `encode_image`: decoded pixels stored as PNG or JPEG bytes.
//!
//! `encode_image` writes PNG (lossless, the default) or JPEG bytes into the
//! `image` column as `struct<bytes, path>`, which HuggingFace `datasets`
//! reads as its `Image` feature. JPEG is written by `jpeg-encoder` (AVX2
//! where the CPU has it) with 4:2:0 chroma, as Pillow and OpenCV write it. `to_tensor` writes `pixel_values`, a
//! `[3][height][width]` nest of fixed-size float32 lists (one contiguous
//! CHW block a row), normalised as `(pixel - mean) / std`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, SchemaRef};
use image::ImageEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use rayon::prelude::*;

use super::{HEIGHT, PIXELS, Pixels, WIDTH, require_pixels, schema_with};
use crate::error::Result;
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
    let mut out = Vec::new();
    match codec {
        ImageCodec::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
                .write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
        }
        ImageCodec::Jpeg => {
            let (Ok(w), Ok(h)) = (u16::try_from(w), u16::try_from(h)) else {
                return Err(format!("{w} x {h} is larger than JPEG allows (65535)"));
            };
            // Chroma at half resolution both ways (4:2:0), as Pillow and
            // OpenCV write JPEGs by default.
            let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
            encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
            encoder
                .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| e.to_string())?;
            return Ok(out);
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(out)
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
                encode(rgb, w, h, self.cfg.format, self.cfg.quality)
                    .map_err(|m| ("encode_failed", m))
            })
            .collect();
        let (batch, encoded) = super::keep_ok(batch, encoded, cx)?;
        let image = media_struct_column(&batch, encoded)?;
        let schema = self.output_schema(&batch.schema())?;
        super::batch_with(&batch, &schema, vec![("image", image)])
    }
}

impl BuildStage for EncodeImageConfig {
    fn build(&self, _cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        let stage = EncodeImage::new(self).map_err(|m| BuildError::new("quality", m))?;
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
