//! Image stages. They pass decoded images between them as working columns
//! that are never stored: `_pixels` (RGB8, row-major, 3 bytes a pixel),
//! `_width` and `_height`. When every image has the same size (after a
//! crop), `_pixels` carries it in its field metadata, so stages that need a
//! fixed size (features, mixing, tensors) check it when the pipeline is
//! built, before any data is read.
//!
//! | stage | what it does |
//! |---|---|
//! | `decode_image` | encoded bytes to RGB pixels, EXIF orientation applied; limits on pixels |
//! | `resize_image` | shorter side to `size`, then a centre or random `crop` square |
//! | `image_features` | an ONNX model's features (EfficientNet-Lite0 by default), logits, top-k |
//! | `mix` | CutMix / MixUp copies with mixed labels, as timm does |
//! | `encode_image` | pixels to PNG/JPEG bytes in datasets' `Image` layout |
//! | `to_tensor` | pixels to a normalised CHW float tensor |

pub mod decode;
pub mod encode;
pub mod features;
pub mod mix;

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BinaryArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};

use crate::error::{Error, Result};
use crate::rejects::Rejection;
use crate::stages::BatchContext;

pub const PIXELS: &str = "_pixels";
pub const WIDTH: &str = "_width";
pub const HEIGHT: &str = "_height";
const SIZE_KEY: &str = "kiln.image_size";

/// The fixed `(width, height)` of every image, when a crop made it so.
pub fn fixed_size(schema: &Schema) -> Option<(u32, u32)> {
    let f = schema.field_with_name(PIXELS).ok()?;
    let (w, h) = f.metadata().get(SIZE_KEY)?.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// The three pixel fields, with the fixed size when known.
pub fn pixel_fields(size: Option<(u32, u32)>) -> [Field; 3] {
    let mut pixels = Field::new(PIXELS, DataType::Binary, false);
    if let Some((w, h)) = size {
        pixels = pixels.with_metadata([(SIZE_KEY.to_string(), format!("{w}x{h}"))].into());
    }
    [
        pixels,
        Field::new(WIDTH, DataType::UInt32, false),
        Field::new(HEIGHT, DataType::UInt32, false),
    ]
}

/// Error unless the input has decoded pixels.
pub fn require_pixels(input: &Schema, stage: &str) -> Result<()> {
    if input.field_with_name(PIXELS).is_err() {
        return Err(Error::Config(format!(
            "{stage} works on decoded images: put a `decode_image` stage before it"
        )));
    }
    Ok(())
}

/// Error unless every image has the same size; returns it.
pub fn require_fixed_size(input: &Schema, stage: &str) -> Result<(u32, u32)> {
    require_pixels(input, stage)?;
    fixed_size(input).ok_or_else(|| {
        Error::Config(format!(
            "{stage} needs images of one size: put a `resize_image` stage with `crop` before it"
        ))
    })
}

/// The pixel columns of a batch.
pub struct Pixels<'a> {
    pub data: &'a BinaryArray,
    pub width: &'a UInt32Array,
    pub height: &'a UInt32Array,
}

impl<'a> Pixels<'a> {
    pub fn of(batch: &'a RecordBatch) -> Result<Self> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::Execution(format!("batch has no column `{name}`")))
        };
        Ok(Pixels {
            data: col(PIXELS)?.as_binary::<i32>(),
            width: col(WIDTH)?.as_primitive::<UInt32Type>(),
            height: col(HEIGHT)?.as_primitive::<UInt32Type>(),
        })
    }

    /// `(rgb, width, height)` of a row.
    pub fn get(&self, row: usize) -> (&'a [u8], u32, u32) {
        (
            self.data.value(row),
            self.width.value(row),
            self.height.value(row),
        )
    }
}

/// The schema with `drop` removed and `add` appended (replacing columns of
/// the same name).
pub fn schema_with(input: &Schema, drop: &[&str], add: &[Field]) -> SchemaRef {
    let mut fields: Vec<Field> = input
        .fields()
        .iter()
        .filter(|f| !drop.contains(&f.name().as_str()))
        .filter(|f| !add.iter().any(|a| a.name() == f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(add.iter().cloned());
    Arc::new(Schema::new(fields))
}

/// `batch` (already filtered to the kept rows) with `drop` removed and the
/// new columns appended, in `schema`'s order.
pub fn batch_with(
    batch: &RecordBatch,
    schema: &SchemaRef,
    added: Vec<(&str, ArrayRef)>,
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            added
                .iter()
                .find(|(n, _)| *n == f.name())
                .map(|(_, a)| a.clone())
                .or_else(|| batch.column_by_name(f.name()).cloned())
                .ok_or_else(|| Error::Execution(format!("no column `{}`", f.name())))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The rows of `batch` whose result is `Ok`, with their values; the others
/// are rejected with their reasons.
pub fn keep_ok<T>(
    batch: RecordBatch,
    results: Vec<std::result::Result<T, Rejection>>,
    cx: &mut BatchContext,
) -> Result<(RecordBatch, Vec<T>)> {
    let mut keep = Vec::with_capacity(results.len());
    let mut values = Vec::with_capacity(results.len());
    for (row, r) in results.into_iter().enumerate() {
        keep.push(r.is_ok());
        match r {
            Ok(v) => values.push(v),
            Err((kind, msg)) => cx.reject(&batch, row, kind, msg)?,
        }
    }
    Ok((keep_rows(batch, &keep)?, values))
}

/// Rows of `batch` where `keep` is true.
pub fn keep_rows(batch: RecordBatch, keep: &[bool]) -> Result<RecordBatch> {
    if keep.iter().all(|&k| k) {
        return Ok(batch);
    }
    Ok(arrow::compute::filter_record_batch(
        &batch,
        &keep.to_vec().into(),
    )?)
}

/// A fixed-size list of `n` values of `ty` a row.
pub fn fixed_list_type(ty: DataType, n: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", ty, true)), n as i32)
}

pub fn fixed_list_field(name: &str, ty: DataType, n: usize) -> Field {
    Field::new(name, fixed_list_type(ty, n), false)
}

/// A fixed-size list column of `f32` with `n` values a row.
pub fn f32_list(values: Vec<f32>, n: usize) -> Result<ArrayRef> {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    Ok(Arc::new(arrow::array::FixedSizeListArray::try_new(
        item,
        n as i32,
        Arc::new(arrow::array::Float32Array::from(values)),
        None,
    )?))
}

/// The seed of every row's generator in this stage (see
/// [`BatchContext::sample_seed`]), computed before rows go to other threads.
pub fn sample_seeds(batch: &RecordBatch, cx: &BatchContext) -> Result<Vec<u64>> {
    let ids = batch
        .column_by_name("sample_id")
        .ok_or_else(|| Error::Execution(format!("{}: no `sample_id` column", cx.stage)))?
        .as_string::<i32>();
    Ok((0..batch.num_rows())
        .map(|r| cx.sample_seed(ids.value(r)))
        .collect())
}
