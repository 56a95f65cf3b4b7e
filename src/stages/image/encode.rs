//! `encode_image`: decoded pixels stored as PNG or JPEG bytes.
//!
//! `encode_image` writes PNG (lossless, the default) or JPEG bytes into the
//! `image` column as `struct<bytes, path>`, which HuggingFace `datasets`
//! reads as its `Image` feature. `to_tensor` writes `pixel_values`, a
//! `[3][height][width]` nest of fixed-size float32 lists (one contiguous
//! CHW block a row), normalised as `(pixel - mean) / std`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, SchemaRef};
use image::ImageEncoder;
use image::codecs::jpeg::JpegEncoder;
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
        ImageCodec::Jpeg => JpegEncoder::new_with_quality(&mut out, quality).write_image(
            rgb,
            w,
            h,
            image::ExtendedColorType::Rgb8,
        ),
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
