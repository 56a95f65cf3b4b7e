//! `encode_image` and `to_tensor`: the two ways decoded pixels are stored.
//!
//! `encode_image` writes PNG (lossless, the default) or JPEG bytes into the
//! `image` column as `struct<bytes, path>`, which HuggingFace `datasets`
//! reads as its `Image` feature. `to_tensor` writes `pixel_values`, a
//! `[3][height][width]` nest of fixed-size float32 lists (one contiguous
//! CHW block a row), normalised as `(pixel - mean) / std`.

use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, SchemaRef};
use image::ImageEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use rayon::prelude::*;

use super::{
    HEIGHT, PIXELS, Pixels, WIDTH, fixed_list_type, require_fixed_size, require_pixels, schema_with,
};
use crate::config::{EncodeImageConfig, ImageCodec, ToTensorConfig};
use crate::error::{Error, Result};
use crate::schema::{media_struct_column, media_struct_type};
use crate::stages::{BatchContext, Stage};

const PIXEL_COLUMNS: [&str; 3] = [PIXELS, WIDTH, HEIGHT];

pub struct EncodeStage {
    cfg: EncodeImageConfig,
}

impl EncodeStage {
    pub fn new(cfg: &EncodeImageConfig) -> std::result::Result<Self, String> {
        if !(1..=100).contains(&cfg.quality) {
            return Err("quality must be within 1..=100".into());
        }
        Ok(EncodeStage { cfg: cfg.clone() })
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

impl Stage for EncodeStage {
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

pub struct TensorStage {
    cfg: ToTensorConfig,
    size: (u32, u32),
}

impl TensorStage {
    pub fn build(cfg: &ToTensorConfig, input: &SchemaRef) -> Result<Self> {
        let size = require_fixed_size(input, "to_tensor")?;
        if cfg.std.contains(&0.0) {
            return Err(Error::Config("std must not be 0".into()));
        }
        Ok(TensorStage {
            cfg: cfg.clone(),
            size,
        })
    }

    fn tensor_type(&self) -> DataType {
        let (w, h) = (self.size.0 as usize, self.size.1 as usize);
        fixed_list_type(fixed_list_type(fixed_list_type(DataType::Float32, w), h), 3)
    }
}

impl Stage for TensorStage {
    fn name(&self) -> &str {
        "to_tensor"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        require_fixed_size(input, "to_tensor")?;
        Ok(schema_with(
            input,
            &PIXEL_COLUMNS,
            &[Field::new("pixel_values", self.tensor_type(), false)],
        ))
    }

    fn process(&self, batch: RecordBatch, _cx: &mut BatchContext) -> Result<RecordBatch> {
        let px = Pixels::of(&batch)?;
        let (w, h) = (self.size.0 as usize, self.size.1 as usize);
        let plane = w * h;
        let mut values = vec![0f32; batch.num_rows() * 3 * plane];
        values
            .par_chunks_mut(3 * plane)
            .enumerate()
            .for_each(|(row, out)| {
                let (rgb, _, _) = px.get(row);
                for (p, pixel) in rgb.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        out[c * plane + p] = (pixel[c] as f32 - self.cfg.mean[c]) / self.cfg.std[c];
                    }
                }
            });
        let DataType::FixedSizeList(rows_field, _) = self.tensor_type() else {
            unreachable!()
        };
        let DataType::FixedSizeList(cols_field, _) = rows_field.data_type().clone() else {
            unreachable!()
        };
        let DataType::FixedSizeList(item, _) = cols_field.data_type().clone() else {
            unreachable!()
        };
        let cols = FixedSizeListArray::try_new(
            item,
            w as i32,
            Arc::new(Float32Array::from(values)),
            None,
        )?;
        let rows = FixedSizeListArray::try_new(cols_field, h as i32, Arc::new(cols), None)?;
        let channels = FixedSizeListArray::try_new(rows_field, 3, Arc::new(rows), None)?;
        let schema = self.output_schema(&batch.schema())?;
        super::batch_with(&batch, &schema, vec![("pixel_values", Arc::new(channels))])
    }
}
