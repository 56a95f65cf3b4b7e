//! `resize_image`: the shorter side to `size`, then an optional square crop.
//! A resize right after a `decode_image` is run by that decode, in the same
//! pass over each image.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use fast_image_resize::Resizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::decode::{finish, out_size, resize_crop};
use super::{Pixels, pixel_fields, require_pixels, schema_with};
use crate::error::Result;
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
