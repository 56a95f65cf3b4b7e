//! `to_tensor`: pixels to `pixel_values`, a `[3][height][width]` nest of
//! fixed-size float32 lists (one contiguous CHW block a row), normalised as
//! `(pixel - mean) / std`.

use std::sync::Arc;

use arrow::array::{FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, SchemaRef};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::encode::PIXEL_COLUMNS;
use super::{Pixels, fixed_list_type, require_fixed_size, schema_with};
use crate::error::{Error, Result};
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};

/// Store the pixels as a float tensor `pixel_values` (CHW), normalised as
/// `(pixel - mean) / std` with mean and std in pixel units (0-255).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToTensorConfig {
    #[serde(default = "default_tensor_mean")]
    pub mean: [f32; 3],
    #[serde(default = "default_tensor_std")]
    pub std: [f32; 3],
}

fn default_tensor_mean() -> [f32; 3] {
    [123.675, 116.28, 103.53]
}

fn default_tensor_std() -> [f32; 3] {
    [58.395, 57.12, 57.375]
}

impl BuildStage for ToTensorConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        let stage = ToTensor::build(self, cx.input).map_err(|e| BuildError::new("type", e))?;
        Ok(Built::Ready(Arc::new(stage)))
    }
}

pub struct ToTensor {
    cfg: ToTensorConfig,
    size: (u32, u32),
}

impl ToTensor {
    pub fn build(cfg: &ToTensorConfig, input: &SchemaRef) -> Result<Self> {
        let size = require_fixed_size(input, "to_tensor")?;
        if cfg.std.contains(&0.0) {
            return Err(Error::Config("std must not be 0".into()));
        }
        Ok(ToTensor {
            cfg: cfg.clone(),
            size,
        })
    }

    fn tensor_type(&self) -> DataType {
        let (w, h) = (self.size.0 as usize, self.size.1 as usize);
        fixed_list_type(fixed_list_type(fixed_list_type(DataType::Float32, w), h), 3)
    }
}

impl Stage for ToTensor {
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
