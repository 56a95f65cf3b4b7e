//! Plain text: one document per line, or one per file.

use arrow::array::RecordBatch;

use super::lines::{Line, LineReader};
use super::{ReadOptions, RecordBuilder, SourceReader, Split};
use crate::config::{InputFormat, Limits};
use crate::error::Result;
use crate::rejects::RejectSink;

/// Open the lines of a split; an empty or unreadable file becomes one reject
/// and `None`.
pub fn open_lines(
    path: &str,
    (start, end): (u64, u64),
    max_line: usize,
    format: InputFormat,
    rejects: &mut RejectSink,
) -> Result<Option<LineReader>> {
    let opened = std::fs::metadata(path).and_then(|m| {
        if start == 0 && m.len() == 0 {
            Ok(None)
        } else {
            LineReader::open(path, start, end, max_line).map(Some)
        }
    });
    match opened {
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => {
            rejects.push(super::reject(
                format,
                path,
                0,
                "empty_file",
                "the file is empty",
            ))?;
            Ok(None)
        }
        Err(e) => {
            rejects.push(super::reject(
                format,
                path,
                start,
                "unreadable",
                format!("cannot read the file: {e}"),
            ))?;
            Ok(None)
        }
    }
}

pub struct TextLinesReader {
    path: String,
    range: (u64, u64),
    lines: Option<LineReader>,
    opened: bool,
    limits: Limits,
    batch_rows: usize,
    builder: RecordBuilder,
}

impl TextLinesReader {
    pub fn new(split: &Split, opts: &ReadOptions, builder: RecordBuilder) -> Self {
        TextLinesReader {
            path: split.path.clone(),
            range: (split.start, split.end),
            lines: None,
            opened: false,
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder,
        }
    }
}

fn reject(path: &str, pos: u64, kind: &str, message: impl Into<String>) -> crate::rejects::Reject {
    super::reject(InputFormat::Text, path, pos, kind, message)
}

impl SourceReader for TextLinesReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        if !self.opened {
            self.opened = true;
            self.lines = open_lines(
                &self.path,
                self.range,
                self.limits.max_line_bytes,
                InputFormat::Text,
                rejects,
            )?;
        }
        while let Some(lines) = self.lines.as_mut() {
            let (pos, line) = match lines.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => {
                    self.lines = None;
                    break;
                }
                Err(e) => {
                    rejects.push(reject(
                        &self.path,
                        self.range.0,
                        "read_error",
                        format!("reading stopped: {e}"),
                    ))?;
                    self.lines = None;
                    break;
                }
            };
            match line {
                Line::TooLong(n) => rejects.push(reject(
                    &self.path,
                    pos,
                    "line_too_long",
                    format!(
                        "line is {n} bytes, over limits.max_line_bytes = {}",
                        self.limits.max_line_bytes
                    ),
                ))?,
                Line::Data(bytes) => {
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match super::utf8(bytes)
                        .and_then(|t| super::check_document(t, &self.limits).map(|_| t))
                    {
                        Ok(text) => self.builder.push(pos, text, &[]),
                        Err((kind, msg)) => rejects.push(reject(&self.path, pos, kind, msg))?,
                    }
                }
            }
            if self.builder.is_full(self.batch_rows) {
                break;
            }
        }
        self.builder.finish()
    }
}

/// Whole files as documents; a split lists one file.
pub struct TextFileReader {
    path: String,
    done: bool,
    limits: Limits,
    builder: RecordBuilder,
}

impl TextFileReader {
    pub fn new(split: &Split, opts: &ReadOptions, builder: RecordBuilder) -> Self {
        TextFileReader {
            path: split.path.clone(),
            done: false,
            limits: opts.limits.clone(),
            builder,
        }
    }
}

impl SourceReader for TextFileReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(None);
        }
        let max = self.limits.max_document_bytes;
        let read = std::fs::metadata(&self.path).and_then(|m| {
            if m.len() > max as u64 {
                Ok(Err(m.len()))
            } else {
                std::fs::read(&self.path).map(Ok)
            }
        });
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(len)) => {
                rejects.push(reject(
                    &self.path,
                    0,
                    "document_too_long",
                    format!("file is {len} bytes, over limits.max_document_bytes = {max}"),
                ))?;
                return Ok(None);
            }
            Err(e) => {
                rejects.push(reject(
                    &self.path,
                    0,
                    "unreadable",
                    format!("cannot read the file: {e}"),
                ))?;
                return Ok(None);
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            rejects.push(reject(
                &self.path,
                0,
                "empty_file",
                "the file is empty or blank",
            ))?;
            return Ok(None);
        }
        match super::utf8(&bytes).and_then(|t| super::check_document(t, &self.limits).map(|_| t)) {
            Ok(text) => self.builder.push(0, text, &[]),
            Err((kind, msg)) => rejects.push(reject(&self.path, 0, kind, msg))?,
        }
        self.builder.finish()
    }
}
