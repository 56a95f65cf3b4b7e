//! CSV with a header row; the document in a named column.

use std::fs::File;

use arrow::array::RecordBatch;

use super::{InputSpec, ReadOptions, RecordBuilder, SourceReader, Split};
use crate::config::{InputFormat, Limits};
use crate::error::Result;
use crate::rejects::RejectSink;

pub struct CsvReader {
    path: String,
    delimiter: u8,
    text_field: String,
    columns: Vec<String>,
    state: State,
    limits: Limits,
    batch_rows: usize,
    builder: RecordBuilder,
}

enum State {
    Unopened,
    Reading {
        reader: Box<csv::Reader<File>>,
        text_ix: usize,
        col_ix: Vec<Option<usize>>,
    },
    Done,
}

fn reject(path: &str, pos: u64, kind: &str, message: impl Into<String>) -> crate::rejects::Reject {
    super::reject(InputFormat::Csv, path, pos, kind, message)
}

impl CsvReader {
    pub fn new(
        split: &Split,
        spec: &InputSpec,
        opts: &ReadOptions,
        builder: RecordBuilder,
    ) -> Self {
        CsvReader {
            path: split.path.clone(),
            delimiter: spec.delimiter,
            text_field: spec.text_field.clone(),
            columns: spec.columns.clone(),
            state: State::Unopened,
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder,
        }
    }

    fn open(&self, rejects: &mut RejectSink) -> Result<State> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) => {
                rejects.push(reject(
                    &self.path,
                    0,
                    "unreadable",
                    format!("cannot read the file: {e}"),
                ))?;
                return Ok(State::Done);
            }
        };
        if file.metadata().map(|m| m.len() == 0).unwrap_or(false) {
            rejects.push(reject(&self.path, 0, "empty_file", "the file is empty"))?;
            return Ok(State::Done);
        }
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(self.delimiter)
            .flexible(true)
            .from_reader(file);
        let headers = match reader.byte_headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                rejects.push(reject(
                    &self.path,
                    0,
                    "invalid_csv",
                    format!("cannot read the header: {e}"),
                ))?;
                return Ok(State::Done);
            }
        };
        let find = |name: &str| headers.iter().position(|h| h == name.as_bytes());
        let Some(text_ix) = find(&self.text_field) else {
            rejects.push(reject(
                &self.path,
                0,
                "missing_column",
                format!(
                    "the header has no column `{}`; the whole file is rejected",
                    self.text_field
                ),
            ))?;
            return Ok(State::Done);
        };
        let col_ix = self.columns.iter().map(|c| find(c)).collect();
        Ok(State::Reading {
            reader: Box::new(reader),
            text_ix,
            col_ix,
        })
    }
}

impl SourceReader for CsvReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        if matches!(self.state, State::Unopened) {
            self.state = self.open(rejects)?;
        }
        let mut record = csv::ByteRecord::new();
        while let State::Reading {
            reader,
            text_ix,
            col_ix,
        } = &mut self.state
        {
            let pos = reader.position().byte();
            match reader.read_byte_record(&mut record) {
                Ok(false) => {
                    self.state = State::Done;
                    break;
                }
                Ok(true) => {}
                Err(e) => {
                    rejects.push(reject(&self.path, pos, "invalid_csv", format!("{e}")))?;
                    if e.is_io_error() {
                        self.state = State::Done;
                        break;
                    }
                    continue;
                }
            }
            if record.as_slice().len() > self.limits.max_line_bytes {
                rejects.push(reject(
                    &self.path,
                    pos,
                    "line_too_long",
                    format!(
                        "record is {} bytes, over limits.max_line_bytes = {}",
                        record.as_slice().len(),
                        self.limits.max_line_bytes
                    ),
                ))?;
                continue;
            }
            let Some(field) = record.get(*text_ix) else {
                rejects.push(reject(
                    &self.path,
                    pos,
                    "missing_field",
                    format!(
                        "the record has {} fields, no `{}`",
                        record.len(),
                        self.text_field
                    ),
                ))?;
                continue;
            };
            let text = match super::utf8(field)
                .and_then(|t| super::check_document(t, &self.limits).map(|_| t))
            {
                Ok(t) => t,
                Err((kind, msg)) => {
                    rejects.push(reject(&self.path, pos, kind, msg))?;
                    continue;
                }
            };
            // Extra columns are metadata: bad UTF-8 there is replaced, not rejected.
            let extras: Vec<Option<std::borrow::Cow<str>>> = col_ix
                .iter()
                .map(|ix| ix.and_then(|i| record.get(i)).map(String::from_utf8_lossy))
                .collect();
            let extras: Vec<Option<&str>> = extras.iter().map(|e| e.as_deref()).collect();
            self.builder.push(pos, text, &extras);
            if self.builder.is_full(self.batch_rows) {
                break;
            }
        }
        self.builder.finish()
    }
}
