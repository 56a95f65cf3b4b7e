//! Stages: batch in, batch out.
//!
//! A stage is built from its config when the pipeline is built (so a bad
//! config fails before any data is read), declares its output schema from its
//! input schema, and then processes batches. A bad record is not an error: the
//! stage calls [`BatchContext::reject`] and leaves the row out of its output.
//! `Err` is for what must stop the run.
//!
//! | stage | config | what it does |
//! |---|---|---|
//! | `sql` | top-level `sql` | DataFusion filter/projection over the table `input` |
//! | `augment_text` | `[[stages]] type = "augment_text"` | synonym and back-translated copies, balanced per label; see [`text::augment`] |
//! | `tokenize` | `[[stages]] type = "tokenize"` | byte-level BPE, `text` to `input_ids` + `length` |
//! | `chunk` | `[[stages]] type = "chunk"` | sliding windows of `input_ids`, one row per window |
//! | image stages | `decode_image`, `resize_image`, `image_features`, `mix`, `encode_image`, `to_tensor` | see [`image`] |

pub mod audio;
pub mod columns;
pub mod image;
pub mod sql;
pub mod text;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::rejects::{Reject, RejectSink};

pub trait Stage: Send + Sync {
    /// The name rejects and logs carry.
    fn name(&self) -> &str;
    /// Checked when the pipeline is built, before any data is read.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef>;
    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch>;
    /// A line for the run summary (which model ran on which device...).
    fn report(&self) -> Option<String> {
        None
    }
}

/// What a stage gets besides the batch: the run seed, the reject sink, and
/// counters.
pub struct BatchContext<'a> {
    pub seed: u64,
    pub stage: &'a str,
    pub rejects: &'a mut RejectSink,
    /// Rows dropped on purpose (by a filter), not rejected.
    pub filtered: u64,
}

impl BatchContext<'_> {
    /// Reject row `row` of `batch`, taking its id and provenance from the
    /// batch's `sample_id`, `source` and `position` columns.
    pub fn reject(
        &mut self,
        batch: &RecordBatch,
        row: usize,
        kind: &str,
        message: impl Into<String>,
    ) -> Result<()> {
        let string = |name: &str| {
            batch.column_by_name(name).and_then(|c| {
                let c = c.as_string_opt::<i32>()?;
                (!c.is_null(row)).then(|| c.value(row).to_string())
            })
        };
        let position = batch.column_by_name("position").and_then(|c| {
            let c = c.as_primitive_opt::<arrow::datatypes::UInt64Type>()?;
            (!c.is_null(row)).then(|| c.value(row))
        });
        self.rejects.push(Reject {
            sample_id: string("sample_id").unwrap_or_default(),
            source: string("source"),
            position,
            stage: self.stage.to_string(),
            kind: kind.to_string(),
            message: message.into(),
        })
    }

    /// The seed of a sample's random generator in this stage: a function of
    /// the run seed, the sample id and the stage name only, never of thread,
    /// batch or attempt.
    pub fn sample_seed(&self, sample_id: &str) -> u64 {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(&self.seed.to_le_bytes());
        h.update(self.stage.as_bytes());
        h.update(&[0]);
        h.update(sample_id.as_bytes());
        let d = h.finish();
        u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
    }
}
