//! The reader of metadata tables joined with the media files they name.

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};

use super::MediaSpec;
use super::files::read_limited;
use super::record::{MediaRecordBuilder, Record, reject};
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::{RejectSink, Rejection};
use crate::sources::{ReadOptions, SourceReader};

/// A metadata table joined with the media files its `image_column` or
/// `audio_column` names:
/// the table is read by the table's own reader (which rejects bad rows),
/// then each row's file is read.
pub struct TableMediaReader {
    inner: Box<dyn SourceReader>,
    spec: MediaSpec,
    limits: Limits,
    batch_rows: usize,
    builder: MediaRecordBuilder,
    /// A table batch not yet fully read, and the next row of it.
    pending: Option<(RecordBatch, usize)>,
    captions_only: bool,
}

impl TableMediaReader {
    pub fn new(inner: Box<dyn SourceReader>, spec: &MediaSpec, opts: &ReadOptions) -> Self {
        TableMediaReader {
            inner,
            spec: spec.clone(),
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder: MediaRecordBuilder::new(spec.media, opts),
            pending: None,
            captions_only: opts.captions_only,
        }
    }

    fn push_row(
        &mut self,
        batch: &RecordBatch,
        row: usize,
        rejects: &mut RejectSink,
    ) -> Result<()> {
        let string = |name: &str| {
            batch.column_by_name(name).and_then(|c| {
                let c = c.as_string::<i32>();
                (!c.is_null(row)).then(|| c.value(row))
            })
        };
        let id = string("sample_id").unwrap_or_default().to_string();
        let source = string("source").unwrap_or_default();
        let position = batch
            .column_by_name("position")
            .map(|c| c.as_primitive::<arrow::datatypes::UInt64Type>().value(row))
            .unwrap_or_default();
        let stage = self.spec.media.read_stage();
        let file = string(&self.spec.inner_path_column()).unwrap_or_default();
        let label = match self.spec.label_column.as_deref().and_then(string) {
            None => None,
            Some(name) => match self.spec.class_id(name) {
                Ok(l) => Some(l),
                Err(m) => {
                    return rejects.push(reject(stage, id, source, position, "unknown_label", m));
                }
            },
        };
        let text = self.spec.inner_caption_column().and_then(|c| string(&c));
        let (full_str, read) = self.read_named(&self.spec.root, file);
        let bytes = match read {
            Ok(b) => b,
            Err((kind, msg)) => {
                return rejects.push(reject(
                    stage,
                    id,
                    source,
                    position,
                    kind,
                    format!("{full_str}: {msg}"),
                ));
            }
        };
        // The second file of a multimodal row: both are read, or the row is
        // rejected with the reason of the one that failed.
        let mut also: Option<(String, Vec<u8>)> = None;
        if let Some(a) = &self.spec.also {
            let file = string(&a.column).unwrap_or_default();
            let (path, read) = match file.is_empty() && !self.captions_only {
                true => (
                    crate::storage::join(&a.root, file),
                    Err((
                        "missing_file",
                        format!("the row names no file in `{}`", a.column),
                    )),
                ),
                false => self.read_named(&a.root, file),
            };
            match read {
                // Stored as the row names it, whatever the root.
                Ok(b) => also = Some((file.to_string(), b)),
                Err((kind, msg)) => {
                    return rejects.push(reject(
                        a.media.read_stage(),
                        id,
                        source,
                        position,
                        kind,
                        format!("{path}: {msg}"),
                    ));
                }
            }
        }
        let extras: Vec<Option<&str>> = self.builder.extra_names().map(string).collect();
        self.builder.push(Record {
            sample_id: id,
            source,
            position,
            path: file,
            data: &bytes,
            label,
            text,
            also: also.as_ref().map(|(p, b)| (p.as_str(), b.as_slice())),
            extras: &extras,
        });
        Ok(())
    }
}

impl TableMediaReader {
    /// The file a row names, resolved against `root`, and its bytes (none
    /// when only captions are read).
    fn read_named(
        &self,
        root: &str,
        file: &str,
    ) -> (String, std::result::Result<Vec<u8>, Rejection>) {
        let full = match crate::storage::is_url(file) || Path::new(file).is_absolute() {
            true => file.to_string(),
            false => crate::storage::join(root, file),
        };
        let read = match self.captions_only {
            true => Ok(Vec::new()),
            false => read_limited(&full, self.limits.max_file_bytes),
        };
        (full, read)
    }
}

impl SourceReader for TableMediaReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        loop {
            if self.pending.is_none() {
                match self.inner.next_batch(rejects)? {
                    Some(b) => self.pending = Some((b, 0)),
                    None => return self.builder.finish(),
                }
            }
            let (batch, mut row) = self.pending.take().expect("set above");
            while row < batch.num_rows() && !self.builder.is_full(self.batch_rows) {
                self.push_row(&batch, row, rejects)?;
                row += 1;
            }
            if row < batch.num_rows() {
                self.pending = Some((batch, row));
            }
            if self.builder.is_full(self.batch_rows) {
                return self.builder.finish();
            }
        }
    }
}
