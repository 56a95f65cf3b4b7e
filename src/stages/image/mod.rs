//! Image stages. They pass decoded images between them as working columns
//! that are never stored: `_pixels` (RGB8, row-major, 3 bytes a pixel),
//! `_width` and `_height`. When every image has the same size (after a
//! crop), `_pixels` carries it in its field metadata, so stages that need a
//! fixed size (features, mixing, tensors) check it when the pipeline is
//! built, before any data is read.
//!
//! A `resize_image` right after `decode_image`, and an `encode_image` right
//! after either, are run by the decode in one pass over each image, in
//! buffers each thread keeps between images ([`decode::DecodeImage`]): the
//! batch then holds only what the last of them makes.
//!
//! | stage | what it does |
//! |---|---|
//! | `decode_image` | encoded bytes to RGB pixels, EXIF orientation applied; limits on pixels; `draft`: JPEGs at a reduced DCT scale |
//! | `resize_image` | shorter side to `size`, then a centre or random `crop` square |
//! | `image_features` | an ONNX model's features (EfficientNet-Lite0 by default), logits, top-k |
//! | `mix` | CutMix / MixUp copies with mixed labels, as timm does |
//! | `encode_image` | pixels to PNG/JPEG bytes in datasets' `Image` layout |
//! | `to_tensor` | pixels to a normalised CHW float tensor |

pub mod decode;
pub mod encode;
pub mod features;
pub mod mix;
pub mod resize;
pub mod serve;
pub mod tensor;

use arrow::array::{AsArray, BinaryArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};

use crate::error::{Error, Result};
pub use crate::stages::columns::{
    batch_with, f32_list, fixed_list_field, fixed_list_type, keep_ok, keep_rows, sample_seeds,
    schema_with,
};

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
                .ok_or_else(|| Error::Internal(format!("batch has no column `{name}`")))
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
