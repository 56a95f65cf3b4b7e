//! Sliding-window chunking of `input_ids`: windows of at most `max_tokens`,
//! consecutive windows sharing `stride` tokens, one row per window with its
//! index in `window`. A document that fits is one window; an empty one is one
//! empty window, so every document stays in the output.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};
use arrow::array::{AsArray, ListArray, RecordBatch, UInt32Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, SchemaRef, UInt32Type};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkConfig {
    /// Longest window, in tokens.
    pub max_tokens: usize,
    /// Tokens shared by consecutive windows.
    #[serde(default)]
    pub stride: usize,
}

pub struct Chunk {
    max_tokens: usize,
    stride: usize,
}

impl Chunk {
    /// Fails when the window would not advance.
    pub fn new(config: &ChunkConfig) -> std::result::Result<Self, String> {
        if config.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        if config.stride >= config.max_tokens {
            return Err(format!(
                "stride ({}) must be smaller than max_tokens ({})",
                config.stride, config.max_tokens
            ));
        }
        Ok(Chunk {
            max_tokens: config.max_tokens,
            stride: config.stride,
        })
    }

    /// Start offsets of the windows over a document of `len` tokens.
    pub fn window_starts(&self, len: usize) -> impl Iterator<Item = usize> + use<> {
        let step = self.max_tokens - self.stride;
        let max = self.max_tokens;
        let count = if len <= max {
            1
        } else {
            (len - max).div_ceil(step) + 1
        };
        (0..count).map(move |i| i * step)
    }
}

impl Stage for Chunk {
    fn name(&self) -> &str {
        "chunk"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        for (name, ok) in [
            (
                "input_ids",
                matches!(
                    input.field_with_name("input_ids").map(|f| f.data_type()),
                    Ok(DataType::List(_))
                ),
            ),
            ("window", input.field_with_name("window").is_ok()),
        ] {
            if !ok {
                return Err(Error::Config(format!(
                    "chunk: needs `{name}` from a tokenize stage before it"
                )));
            }
        }
        Ok(input.clone())
    }

    fn process(&self, batch: RecordBatch, _cx: &mut BatchContext) -> Result<RecordBatch> {
        let schema = batch.schema();
        let ids_ix = schema.index_of("input_ids")?;
        let ids = batch.column(ids_ix).as_list::<i32>();
        let values = ids.values().as_primitive::<UInt32Type>().values();
        let mut take: Vec<u32> = Vec::new();
        let mut window: Vec<u32> = Vec::new();
        let mut new_values: Vec<u32> = Vec::new();
        let mut offsets: Vec<i32> = vec![0];
        let mut lengths: Vec<u32> = Vec::new();
        for row in 0..batch.num_rows() {
            let (s, e) = (
                ids.value_offsets()[row] as usize,
                ids.value_offsets()[row + 1] as usize,
            );
            let doc = &values[s..e];
            for (w, start) in self.window_starts(doc.len()).enumerate() {
                let end = (start + self.max_tokens).min(doc.len());
                if new_values.len() + (end - start) > i32::MAX as usize {
                    return Err(Error::Execution(format!(
                        "chunk: one batch would hold over 2^31 token ids (max_tokens {}, stride {}); lower plan.batch_rows or the stride",
                        self.max_tokens, self.stride
                    )));
                }
                new_values.extend_from_slice(&doc[start..end]);
                offsets.push(new_values.len() as i32);
                lengths.push((end - start) as u32);
                take.push(row as u32);
                window.push(w as u32);
            }
        }
        let indices = UInt32Array::from(take);
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            columns.push(match field.name().as_str() {
                "window" => Arc::new(UInt32Array::from(window.clone())) as _,
                "length" => Arc::new(UInt32Array::from(lengths.clone())) as _,
                "input_ids" => {
                    let item = Arc::new(Field::new("item", DataType::UInt32, true));
                    Arc::new(ListArray::new(
                        item,
                        OffsetBuffer::new(std::mem::take(&mut offsets).into()),
                        Arc::new(UInt32Array::from(std::mem::take(&mut new_values))),
                        None,
                    )) as _
                }
                _ => arrow::compute::take(col.as_ref(), &indices, None)?,
            });
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

impl BuildStage for ChunkConfig {
    fn build(&self, _cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        let stage = Chunk::new(self).map_err(|m| BuildError::new("max_tokens", m))?;
        Ok(Built::Ready(Arc::new(stage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(max: usize, stride: usize, len: usize) -> Vec<(usize, usize)> {
        let s = Chunk::new(&ChunkConfig {
            max_tokens: max,
            stride,
        })
        .unwrap();
        s.window_starts(len)
            .map(|st| (st, (st + max).min(len)))
            .collect()
    }

    #[test]
    fn windows_cover_the_document_with_the_overlap_asked() {
        assert_eq!(windows(4, 0, 0), vec![(0, 0)]);
        assert_eq!(windows(4, 0, 4), vec![(0, 4)]);
        assert_eq!(windows(4, 0, 5), vec![(0, 4), (4, 5)]);
        assert_eq!(windows(4, 1, 10), vec![(0, 4), (3, 7), (6, 10)]);
        assert_eq!(windows(4, 2, 7), vec![(0, 4), (2, 6), (4, 7)]);
        for len in 0..50 {
            let w = windows(5, 2, len);
            assert_eq!(w.last().unwrap().1, len, "last window ends the document");
            assert!(
                w.windows(2).all(|p| p[0].1 - p[1].0 == 2),
                "overlap is the stride"
            );
        }
    }

    #[test]
    fn stride_must_leave_room_to_advance() {
        assert!(
            Chunk::new(&ChunkConfig {
                max_tokens: 4,
                stride: 4
            })
            .is_err()
        );
        assert!(
            Chunk::new(&ChunkConfig {
                max_tokens: 0,
                stride: 0
            })
            .is_err()
        );
    }
}
