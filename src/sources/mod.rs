//! Readers that turn input files into Arrow record batches of records.
//!
//! The text readers (JSONL, plain text, CSV, Parquet) produce the *text
//! record schema*: `sample_id`, `source`, `position`, `text`, then the
//! input's extra `columns` as strings. The media readers ([`media`]: image
//! and audio files, tar shards, tables joined with the files they name)
//! produce the media record schema, which carries the encoded file bytes,
//! labels and captions instead. How each input is read is its `[[inputs]]`
//! table ([`input`]). A record
//! that cannot be read (bad UTF-8, a line over the limit, JSON without the
//! field...) becomes a [`Reject`] and the reader goes on; a reader returns
//! `Err` only for what no record is to blame for.
//!
//! A [`Split`] is the part of one file a task reads: a byte range of a
//! line-oriented file (a line belongs to the split its first byte falls in),
//! a whole file, or a range of Parquet row groups.

mod csv;
pub mod input;
mod jsonl;
mod lines;
pub mod media;
mod parquet;
mod text;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::sources::input::{DocumentMode, InputConfig, InputFormat};

use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::{Reject, RejectSink, Rejection};

pub use self::parquet::row_groups;

/// The part of one input file that one task reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Index into the pipeline's `inputs`.
    pub input: usize,
    /// Where the file is: a local path or a URL.
    pub path: String,
    /// The file's name in sample ids and the `source` column: relative to
    /// its input's root (see `pipeline::inputs::ResolvedInput`), so that the same
    /// corpus gives the same dataset wherever it is mounted or stored.
    pub name: String,
    /// Byte range for line-oriented files, row-group range for Parquet,
    /// `0..size` for whole files.
    pub start: u64,
    pub end: u64,
    /// First row of the range (Parquet only).
    #[serde(default)]
    pub first_row: u64,
}

/// How one input is read: its format and options, resolved.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub format: InputFormat,
    pub document: DocumentMode,
    pub text_field: String,
    pub columns: Vec<String>,
    pub delimiter: u8,
    /// Image and audio inputs: the media, and where labels and captions
    /// come from.
    pub media: Option<media::MediaSpec>,
}

impl InputSpec {
    /// Whether files of this input can be cut into byte ranges.
    pub fn splittable(&self) -> bool {
        matches!(
            (self.format, self.document),
            (InputFormat::Jsonl, _) | (InputFormat::Text, DocumentMode::Lines)
        )
    }

    pub fn from_config(cfg: &InputConfig, format: InputFormat) -> Self {
        InputSpec {
            format,
            document: cfg.document,
            text_field: cfg.text_field.clone(),
            columns: cfg.columns.clone(),
            delimiter: cfg.delimiter.as_bytes().first().copied().unwrap_or(b','),
            media: None,
        }
    }
}

/// The schema every reader produces, given the union of extra columns.
pub fn record_schema(columns: &[String]) -> SchemaRef {
    let mut fields = vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("position", DataType::UInt64, false),
        Field::new("text", DataType::Utf8, false),
    ];
    fields.extend(columns.iter().map(|c| Field::new(c, DataType::Utf8, true)));
    Arc::new(Schema::new(fields))
}

/// Reads one split, batch by batch.
pub trait SourceReader: Send {
    /// The next batch of good records; rejects go to `rejects`. `Ok(None)`
    /// at the end of the split.
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>>;
}

/// What a reader needs besides the split.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub schema: SchemaRef,
    pub limits: Limits,
    pub batch_rows: usize,
    /// Media: cut a batch once what its files' headers claim they decode
    /// to reaches this many bytes (images when a stage keeps full-size
    /// pixels: RGB; audio: float32 samples).
    pub decoded_budget: Option<u64>,
    /// Audio: the rate `decode_audio` resamples to, which the budget counts.
    pub resample_to: Option<u32>,
    /// Read captions only, not the media files (to train a tokenizer): the
    /// media bytes are left empty.
    pub captions_only: bool,
}

/// Consecutive splits read by one reader: whole media files of one input
/// (so that their samples share batches); any other split alone.
pub fn groups<'a>(
    splits: &'a [Split],
    spec_of: impl Fn(&Split) -> &'a InputSpec,
) -> Vec<&'a [Split]> {
    splits
        .chunk_by(|a, b| a.input == b.input && spec_of(a).format.is_media_files())
        .collect()
}

/// A reader of a group of splits (see [`groups`]).
pub fn open_group(splits: &[Split], spec: &InputSpec, opts: &ReadOptions) -> Box<dyn SourceReader> {
    match &spec.media {
        Some(m) if spec.format.is_media_files() => {
            Box::new(media::MediaFileReader::new(splits, m, opts))
        }
        _ => {
            assert_eq!(splits.len(), 1, "only media files are read in groups");
            open(&splits[0], spec, opts)
        }
    }
}

pub fn open(split: &Split, spec: &InputSpec, opts: &ReadOptions) -> Box<dyn SourceReader> {
    if let Some(img) = &spec.media {
        match spec.format {
            InputFormat::Images | InputFormat::Audio => {
                return Box::new(media::MediaFileReader::new(
                    std::slice::from_ref(split),
                    img,
                    opts,
                ));
            }
            InputFormat::Tar => return Box::new(media::TarReader::new(split, img, opts)),
            _ => {
                // The table's own reader, with the file column (or a
                // caption named `text`) as its text.
                let columns = img.inner_columns(&spec.columns);
                let inner_spec = InputSpec {
                    text_field: img.inner_text_field(),
                    columns: columns.clone(),
                    media: None,
                    ..spec.clone()
                };
                let inner_opts = ReadOptions {
                    schema: record_schema(&columns),
                    ..opts.clone()
                };
                let inner = open(split, &inner_spec, &inner_opts);
                return Box::new(media::TableMediaReader::new(inner, img, opts));
            }
        }
    }
    let builder = RecordBuilder::new(opts.schema.clone(), &spec.columns, &split.name);
    match (spec.format, spec.document) {
        (InputFormat::Jsonl, _) => Box::new(jsonl::JsonlReader::new(split, spec, opts, builder)),
        (InputFormat::Text, DocumentMode::Lines) => {
            Box::new(text::TextLinesReader::new(split, opts, builder))
        }
        (InputFormat::Text, DocumentMode::File) => {
            Box::new(text::TextFileReader::new(split, opts, builder))
        }
        (InputFormat::Csv, _) => Box::new(csv::CsvReader::new(split, spec, opts, builder)),
        (InputFormat::Parquet, _) => {
            Box::new(parquet::ParquetReader::new(split, spec, opts, builder))
        }
        (InputFormat::Images | InputFormat::Tar | InputFormat::Audio, _) => {
            unreachable!("media inputs carry a MediaSpec")
        }
    }
}

/// The kind a reading helper gives an input kiln is not allowed to read;
/// the reader turns it into [`denied`].
pub const PERMISSION_DENIED: &str = "permission_denied";

/// An input kiln is not allowed to read is the run's fault, not the
/// sample's: the run stops (exit 2) naming it. Rejected, the sample would be
/// left out for good, since fixing the permissions changes nothing the plan
/// compares; stopped, the same command reads it once they are fixed.
pub fn denied(location: &str) -> crate::error::Error {
    crate::error::Error::io(
        format!("read input `{location}`"),
        std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    )
}

/// `Err(denied)` for an I/O error that is a refused permission.
pub fn check_denied(location: &str, e: &std::io::Error) -> Result<()> {
    match e.kind() == std::io::ErrorKind::PermissionDenied {
        true => Err(denied(location)),
        false => Ok(()),
    }
}

/// The stage name readers put on their rejects.
pub fn stage_name(format: InputFormat) -> &'static str {
    match format {
        InputFormat::Jsonl => "read_jsonl",
        InputFormat::Text => "read_text",
        InputFormat::Csv => "read_csv",
        InputFormat::Parquet => "read_parquet",
        InputFormat::Images => "read_image",
        InputFormat::Audio => "read_audio",
        InputFormat::Tar => "read_tar",
    }
}

pub fn sample_id(path: &str, position: u64) -> String {
    format!("{path}:{position}")
}

/// A reject raised while reading `path` at `position`.
pub fn reject(
    format: InputFormat,
    path: &str,
    position: u64,
    kind: &str,
    message: impl Into<String>,
) -> Reject {
    Reject {
        sample_id: sample_id(path, position),
        source: Some(path.to_string()),
        position: Some(position),
        stage: stage_name(format).to_string(),
        kind: kind.to_string(),
        message: message.into(),
    }
}

/// Builds record batches in the record schema for one source file.
pub struct RecordBuilder {
    schema: SchemaRef,
    path: String,
    /// Where each extra column of the input goes in the record schema.
    extra_slots: Vec<usize>,
    sample_id: StringBuilder,
    source: StringBuilder,
    position: UInt64Builder,
    text: StringBuilder,
    extras: Vec<StringBuilder>,
    rows: usize,
    text_bytes: usize,
}

/// Bytes (text and extra columns) after which a batch is cut even if it has
/// few rows, so that batches of huge documents stay small.
const BATCH_TEXT_BYTES: usize = 8 << 20;

impl RecordBuilder {
    pub fn new(schema: SchemaRef, columns: &[String], path: &str) -> Self {
        let extra_count = schema.fields().len() - 4;
        let extra_slots = columns
            .iter()
            .map(|c| {
                schema
                    .index_of(c)
                    .expect("record schema holds every input column")
                    - 4
            })
            .collect();
        RecordBuilder {
            schema,
            path: path.to_string(),
            extra_slots,
            sample_id: StringBuilder::new(),
            source: StringBuilder::new(),
            position: UInt64Builder::new(),
            text: StringBuilder::new(),
            extras: (0..extra_count).map(|_| StringBuilder::new()).collect(),
            rows: 0,
            text_bytes: 0,
        }
    }

    /// Append a record; `extras` are this input's columns, in its order.
    pub fn push(&mut self, position: u64, text: &str, extras: &[Option<&str>]) {
        self.sample_id.append_value(sample_id(&self.path, position));
        self.source.append_value(&self.path);
        self.position.append_value(position);
        self.text.append_value(text);
        let mut filled = vec![false; self.extras.len()];
        for (value, &slot) in extras.iter().zip(&self.extra_slots) {
            self.extras[slot].append_option(*value);
            self.text_bytes += value.map_or(0, str::len);
            filled[slot] = true;
        }
        for (slot, done) in filled.iter().enumerate() {
            if !done {
                self.extras[slot].append_null();
            }
        }
        self.rows += 1;
        self.text_bytes += text.len();
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_full(&self, batch_rows: usize) -> bool {
        self.rows >= batch_rows || self.text_bytes >= BATCH_TEXT_BYTES
    }

    /// The batch so far, or `None` if empty.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.sample_id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.position.finish()),
            Arc::new(self.text.finish()),
        ];
        columns.extend(
            self.extras
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        self.rows = 0;
        self.text_bytes = 0;
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }
}

/// Check a decoded document against the limits; `Err((kind, message))` if it
/// must be rejected.
pub fn check_document(text: &str, limits: &Limits) -> std::result::Result<(), Rejection> {
    if text.len() > limits.max_document_bytes {
        return Err((
            "document_too_long",
            format!(
                "document is {} bytes, over limits.max_document_bytes = {}",
                text.len(),
                limits.max_document_bytes
            ),
        ));
    }
    Ok(())
}

/// Validate UTF-8, naming the first bad byte.
pub fn utf8(bytes: &[u8]) -> std::result::Result<&str, Rejection> {
    std::str::from_utf8(bytes).map_err(|e| {
        (
            "invalid_utf8",
            format!("invalid UTF-8 at byte {} of the record", e.valid_up_to()),
        )
    })
}
