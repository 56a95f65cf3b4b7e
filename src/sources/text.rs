//! Plain text: one document per line, or one per file.

use arrow::array::RecordBatch;

use super::lines::{Line, LineReader};
use super::{ReadOptions, RecordBuilder, SourceReader, Split};
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::RejectSink;
use crate::sources::input::InputFormat;

/// Open the lines of a split; an empty or unreadable file becomes one reject
/// and `None`.
pub fn open_lines(
    path: &str,
    name: &str,
    (start, end): (u64, u64),
    max_line: usize,
    format: InputFormat,
    rejects: &mut RejectSink,
) -> Result<Option<LineReader>> {
    let opened = crate::storage::stat(path).and_then(|m| {
        if start == 0 && m.size == 0 {
            Ok(None)
        } else {
            LineReader::open(path, start, end, max_line).map(Some)
        }
    });
    if let Err(e) = &opened {
        super::check_denied(path, e)?;
    }
    match opened {
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => {
            rejects.push(super::reject(
                format,
                name,
                0,
                "empty_file",
                "the file is empty",
            ))?;
            Ok(None)
        }
        Err(e) => {
            rejects.push(super::reject(
                format,
                name,
                start,
                "unreadable",
                format!("cannot read the file: {e}"),
            ))?;
            Ok(None)
        }
    }
}

/// The non-blank lines of a split as text; every line that cannot be one
/// (too long, bad UTF-8, a read error) is rejected on the way.
pub struct Lines {
    path: String,
    name: String,
    range: (u64, u64),
    format: InputFormat,
    max_line: usize,
    reader: Option<LineReader>,
    opened: bool,
}

impl Lines {
    pub fn new(split: &Split, format: InputFormat, max_line: usize) -> Self {
        Lines {
            path: split.path.clone(),
            name: split.name.clone(),
            range: (split.start, split.end),
            format,
            max_line,
            reader: None,
            opened: false,
        }
    }

    /// The file's name in ids (see [`Split::name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next good line and its offset; `None` at the end of the split.
    pub fn next(&mut self, rejects: &mut RejectSink) -> Result<Option<(u64, &str)>> {
        if !self.opened {
            self.opened = true;
            self.reader = open_lines(
                &self.path,
                &self.name,
                self.range,
                self.max_line,
                self.format,
                rejects,
            )?;
        }
        let reject =
            |pos, kind: &str, msg: String| super::reject(self.format, &self.name, pos, kind, msg);
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            let (pos, line) = match reader.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => {
                    self.reader = None;
                    return Ok(None);
                }
                Err(e) => {
                    // The rest of the split cannot be read: one reject stands for it.
                    let msg = format!("reading stopped here, the rest of the split is lost: {e}");
                    rejects.push(reject(reader.position(), "read_error", msg))?;
                    self.reader = None;
                    return Ok(None);
                }
            };
            match line {
                Line::TooLong(n) => rejects.push(reject(
                    pos,
                    "line_too_long",
                    format!(
                        "line is {n} bytes, over limits.max_line_bytes = {}",
                        self.max_line
                    ),
                ))?,
                Line::Data(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {}
                Line::Data(bytes) => match super::utf8(bytes) {
                    // Re-borrow: the line lives in the reader's buffer.
                    Ok(_) => break,
                    Err((kind, msg)) => rejects.push(reject(pos, kind, msg))?,
                },
            }
        }
        // The loop breaks only on a good line; fetch it again without
        // reading (a borrow across loop iterations is not expressible).
        let reader = self.reader.as_ref().expect("a line was just read");
        let (pos, bytes) = reader.last_line();
        Ok(Some((
            pos,
            std::str::from_utf8(bytes).expect("checked above"),
        )))
    }
}

pub struct TextLinesReader {
    lines: Lines,
    limits: Limits,
    batch_rows: usize,
    builder: RecordBuilder,
}

impl TextLinesReader {
    pub fn new(split: &Split, opts: &ReadOptions, builder: RecordBuilder) -> Self {
        TextLinesReader {
            lines: Lines::new(split, InputFormat::Text, opts.limits.max_line_bytes),
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
        while let Some((pos, text)) = self.lines.next(rejects)? {
            match super::check_document(text, &self.limits) {
                Ok(()) => self.builder.push(pos, text, &[]),
                Err((kind, msg)) => rejects.push(reject(self.lines.name(), pos, kind, msg))?,
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
    name: String,
    done: bool,
    limits: Limits,
    builder: RecordBuilder,
}

impl TextFileReader {
    pub fn new(split: &Split, opts: &ReadOptions, builder: RecordBuilder) -> Self {
        TextFileReader {
            path: split.path.clone(),
            name: split.name.clone(),
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
        let read = crate::storage::read_limited(&self.path, max as u64);
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(len)) => {
                rejects.push(reject(
                    &self.name,
                    0,
                    "document_too_long",
                    format!("file is {len} bytes, over limits.max_document_bytes = {max}"),
                ))?;
                return Ok(None);
            }
            Err(e) => {
                super::check_denied(&self.path, &e)?;
                rejects.push(reject(
                    &self.name,
                    0,
                    "unreadable",
                    format!("cannot read the file: {e}"),
                ))?;
                return Ok(None);
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            rejects.push(reject(
                &self.name,
                0,
                "empty_file",
                "the file is empty or blank",
            ))?;
            return Ok(None);
        }
        match super::utf8(&bytes).and_then(|t| super::check_document(t, &self.limits).map(|_| t)) {
            Ok(text) => self.builder.push(0, text, &[]),
            Err((kind, msg)) => rejects.push(reject(&self.name, 0, kind, msg))?,
        }
        self.builder.finish()
    }
}
