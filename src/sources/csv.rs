//! CSV with a header row; the document in a named column.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow::array::RecordBatch;

use super::{InputSpec, ReadOptions, RecordBuilder, SourceReader, Split};
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::RejectSink;
use crate::sources::input::InputFormat;

pub struct CsvReader {
    path: String,
    name: String,
    delimiter: u8,
    text_field: String,
    columns: Vec<String>,
    state: State,
    limits: Limits,
    batch_rows: usize,
    builder: RecordBuilder,
    /// Offset of the record being read, for the [`RecordGuard`].
    record_start: Arc<AtomicU64>,
    /// Set when the guard stopped a record.
    tripped: Arc<AtomicBool>,
}

/// Bounds how far the CSV parser may read past the start of the current
/// record, so that a record without an end (an open quote, a file without
/// newlines) is rejected instead of read into memory whole.
struct RecordGuard {
    file: Box<dyn crate::storage::ReadSeek>,
    read: u64,
    record_start: Arc<AtomicU64>,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl Read for RecordGuard {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read - self.record_start.load(Ordering::Relaxed) > self.limit {
            self.tripped.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("record over the line limit"));
        }
        let n = self.file.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

enum State {
    Unopened,
    Reading {
        reader: Box<csv::Reader<RecordGuard>>,
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
            name: split.name.clone(),
            delimiter: spec.delimiter,
            text_field: spec.text_field.clone(),
            columns: spec.columns.clone(),
            state: State::Unopened,
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder,
            record_start: Arc::new(AtomicU64::new(0)),
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }

    fn open(&self, rejects: &mut RejectSink) -> Result<State> {
        let opened = crate::storage::stat(&self.path)
            .and_then(|m| Ok((m.size, crate::storage::open(&self.path)?)));
        let (size, file) = match opened {
            Ok(f) => f,
            Err(e) => {
                super::check_denied(&self.path, &e)?;
                rejects.push(reject(
                    &self.name,
                    0,
                    "unreadable",
                    format!("cannot read the file: {e}"),
                ))?;
                return Ok(State::Done);
            }
        };
        if size == 0 {
            rejects.push(reject(&self.name, 0, "empty_file", "the file is empty"))?;
            return Ok(State::Done);
        }
        let guard = RecordGuard {
            file,
            read: 0,
            record_start: self.record_start.clone(),
            // The parser reads ahead by its buffer; leave room for it.
            limit: self.limits.max_line_bytes as u64 + (64 << 10),
            tripped: self.tripped.clone(),
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(self.delimiter)
            .flexible(true)
            .from_reader(guard);
        let headers = match reader.byte_headers() {
            Ok(h) => h.clone(),
            Err(e) => {
                rejects.push(reject(
                    &self.name,
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
                &self.name,
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
            self.record_start.store(pos, Ordering::Relaxed);
            match reader.read_byte_record(&mut record) {
                Ok(false) => {
                    self.state = State::Done;
                    break;
                }
                Ok(true) => {}
                Err(e) if self.tripped.load(Ordering::Relaxed) => {
                    // Without the record's end there is no next record to
                    // resume at: the rest of the file is one reject.
                    let msg = format!(
                        "a record runs past limits.max_line_bytes = {} (an unclosed quote?); the rest of the file is rejected: {e}",
                        self.limits.max_line_bytes
                    );
                    rejects.push(reject(&self.name, pos, "line_too_long", msg))?;
                    self.state = State::Done;
                    break;
                }
                Err(e) => {
                    let io = e.is_io_error();
                    let kind = if io { "read_error" } else { "invalid_csv" };
                    rejects.push(reject(&self.name, pos, kind, format!("{e}")))?;
                    if io {
                        self.state = State::Done;
                        break;
                    }
                    continue;
                }
            }
            if record.as_slice().len() > self.limits.max_line_bytes {
                rejects.push(reject(
                    &self.name,
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
                    &self.name,
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
                    rejects.push(reject(&self.name, pos, kind, msg))?;
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
