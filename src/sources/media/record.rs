//! Media record batches as the readers build them (cut by rows, encoded
//! bytes and the decoded bytes the files' headers claim) and the readers'
//! rejects.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int64Builder, RecordBatch, StringBuilder, UInt64Builder,
};
use arrow::datatypes::SchemaRef;

use super::Media;
use super::files::claimed_bytes;
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::Reject;
use crate::sources::ReadOptions;

/// Builds batches in the media record schema.
pub(super) struct MediaRecordBuilder {
    schema: SchemaRef,
    sample_id: StringBuilder,
    source: StringBuilder,
    position: UInt64Builder,
    path: StringBuilder,
    bytes_column: BinaryBuilder,
    /// The second file's path and bytes (multimodal records).
    also: Option<(Media, StringBuilder, BinaryBuilder)>,
    label: Option<Int64Builder>,
    text: Option<StringBuilder>,
    /// Extra columns by name, in schema order.
    extras: Vec<(String, StringBuilder)>,
    rows: usize,
    bytes: usize,
    /// Decoded bytes the files' headers claim, when counted.
    decoded_bytes: u64,
    decoded_budget: Option<u64>,
    media: Media,
    limits: Limits,
    /// Audio: the rate decoding resamples to.
    resample_to: Option<u32>,
}

/// Encoded bytes after which a batch is cut.
const BATCH_BYTES: usize = 8 << 20;

/// One sample as a reader hands it to the builder.
pub(super) struct Record<'a> {
    pub(super) sample_id: String,
    pub(super) source: &'a str,
    pub(super) position: u64,
    pub(super) path: &'a str,
    pub(super) data: &'a [u8],
    pub(super) label: Option<i64>,
    pub(super) text: Option<&'a str>,
    /// The second file's path and bytes (multimodal records).
    pub(super) also: Option<(&'a str, &'a [u8])>,
    /// Values of the extra columns, in the builder's order (see
    /// [`MediaRecordBuilder::extra_names`]); missing ones are null.
    pub(super) extras: &'a [Option<&'a str>],
}

impl MediaRecordBuilder {
    pub(super) fn new(media: Media, opts: &ReadOptions) -> Self {
        let schema = opts.schema.clone();
        let label = schema
            .column_with_name("label")
            .map(|_| Int64Builder::new());
        let text = schema
            .column_with_name("text")
            .map(|_| StringBuilder::new());
        let also = [Media::Image, Media::Audio]
            .into_iter()
            .find(|m| *m != media && schema.column_with_name(m.bytes_column()).is_some())
            .map(|m| (m, StringBuilder::new(), BinaryBuilder::new()));
        let own = |name: &str| {
            matches!(name, "label" | "text")
                || also
                    .as_ref()
                    .is_some_and(|(m, _, _)| name == m.bytes_column() || name == m.path_column())
        };
        let extras = schema
            .fields()
            .iter()
            .skip(5)
            .filter(|f| !own(f.name()))
            .map(|f| (f.name().clone(), StringBuilder::new()))
            .collect();
        MediaRecordBuilder {
            schema,
            sample_id: StringBuilder::new(),
            source: StringBuilder::new(),
            position: UInt64Builder::new(),
            path: StringBuilder::new(),
            bytes_column: BinaryBuilder::new(),
            also,
            label,
            text,
            extras,
            rows: 0,
            bytes: 0,
            decoded_bytes: 0,
            decoded_budget: opts.decoded_budget,
            media,
            limits: opts.limits.clone(),
            resample_to: opts.resample_to,
        }
    }

    pub(super) fn push(&mut self, r: Record) {
        self.sample_id.append_value(&r.sample_id);
        self.source.append_value(r.source);
        self.position.append_value(r.position);
        self.path.append_value(r.path);
        self.bytes_column.append_value(r.data);
        let mut also_claim = 0;
        if let Some((m, path, bytes)) = &mut self.also {
            let (p, data) = r.also.unwrap_or_default();
            path.append_value(p);
            bytes.append_value(data);
            self.bytes += data.len();
            if self.decoded_budget.is_some() {
                also_claim = claimed_bytes(*m, data, &self.limits, self.resample_to);
            }
        }
        self.decoded_bytes += also_claim;
        if let Some(b) = &mut self.label {
            b.append_option(r.label);
        }
        if let Some(b) = &mut self.text {
            b.append_option(r.text);
        }
        for (i, (_, b)) in self.extras.iter_mut().enumerate() {
            b.append_option(r.extras.get(i).copied().flatten());
        }
        self.rows += 1;
        self.bytes += r.data.len();
        if self.decoded_budget.is_some() {
            self.decoded_bytes += self.claimed_bytes(r.data);
        }
    }

    fn claimed_bytes(&self, data: &[u8]) -> u64 {
        claimed_bytes(self.media, data, &self.limits, self.resample_to)
    }

    /// The extra columns, in the order [`Record::extras`] gives them.
    pub(super) fn extra_names(&self) -> impl Iterator<Item = &str> {
        self.extras.iter().map(|(n, _)| n.as_str())
    }

    pub(super) fn is_full(&self, batch_rows: usize) -> bool {
        self.rows >= batch_rows
            || self.bytes >= BATCH_BYTES
            || self.decoded_budget.is_some_and(|b| self.decoded_bytes >= b)
    }

    pub(super) fn finish(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.sample_id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.position.finish()),
            Arc::new(self.path.finish()),
            Arc::new(self.bytes_column.finish()),
        ];
        if let Some((_, path, bytes)) = &mut self.also {
            columns.push(Arc::new(path.finish()));
            columns.push(Arc::new(bytes.finish()));
        }
        if let Some(b) = &mut self.label {
            columns.push(Arc::new(b.finish()));
        }
        if let Some(b) = &mut self.text {
            columns.push(Arc::new(b.finish()));
        }
        for (_, b) in &mut self.extras {
            columns.push(Arc::new(b.finish()));
        }
        self.rows = 0;
        self.bytes = 0;
        self.decoded_bytes = 0;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }
}

/// A reject of a media reader, by sample id, source and position.
pub(super) fn reject(
    stage: &str,
    sample_id: String,
    path: &str,
    position: u64,
    kind: &str,
    message: impl Into<String>,
) -> Reject {
    Reject {
        sample_id,
        source: Some(path.to_string()),
        position: Some(position),
        stage: stage.to_string(),
        kind: kind.to_string(),
        message: message.into(),
    }
}
