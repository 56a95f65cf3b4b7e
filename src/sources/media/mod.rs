//! Media readers: image or audio files (a folder or a glob, labelled by
//! their parent folder as torchvision's ImageFolder and datasets'
//! AudioFolder do), WebDataset-style tar shards, and metadata tables
//! (JSONL/CSV/Parquet) joined with the files they name.
//!
//! They all produce the *media record schema*: `sample_id`, `source`,
//! `position`, `path`, the encoded bytes (`_image` or `_audio`, not decoded
//! here), optionally `label` (a class id) and `text` (a caption or
//! transcript), then the input's extra columns as strings. A file that
//! cannot be read, is over `limits.max_file_bytes`, or has an unknown label
//! is a reject; batches are cut by bytes so that a batch of large files
//! stays small.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Int64Builder, RecordBatch, StringBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::{ReadOptions, SourceReader, Split};
use crate::config::{LabelSource, Limits};
use crate::error::Result;
use crate::rejects::{Reject, RejectSink, Rejection};

/// What the files of a media input hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Image,
    Audio,
}

impl Media {
    /// Extensions of the formats kiln decodes.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Media::Image => &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"],
            Media::Audio => &["wav", "flac", "mp3", "ogg", "oga"],
        }
    }

    pub fn has_extension(self, ext: &str) -> bool {
        self.extensions()
            .contains(&ext.to_ascii_lowercase().as_str())
    }

    fn is_file(self, path: &str) -> bool {
        Path::new(path)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| self.has_extension(e))
    }

    /// The working column that carries the encoded bytes.
    pub fn bytes_column(self) -> &'static str {
        match self {
            Media::Image => "_image",
            Media::Audio => "_audio",
        }
    }

    /// The path column of a record's second file (multimodal records).
    pub fn path_column(self) -> &'static str {
        match self {
            Media::Image => "image_path",
            Media::Audio => "audio_path",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Media::Image => "image",
            Media::Audio => "audio",
        }
    }

    /// The stage name of the file readers' rejects.
    fn read_stage(self) -> &'static str {
        match self {
            Media::Image => "read_image",
            Media::Audio => "read_audio",
        }
    }
}

/// The media of a record, where its label and caption come from, and the
/// class names.
#[derive(Debug, Clone)]
pub struct MediaSpec {
    pub media: Media,
    pub labels: LabelSource,
    /// Tables: the column naming the media file.
    pub file_column: Option<String>,
    /// Tables: the folder relative file paths start from.
    pub root: PathBuf,
    pub caption_column: Option<String>,
    pub label_column: Option<String>,
    /// The dataset's class names, in id order.
    pub classes: Arc<Vec<String>>,
    /// Tables naming an image and an audio file a row: the audio file.
    pub also: Option<AlsoFile>,
}

/// A second media file each table row names (multimodal records: the
/// image is the record's first file, the audio file this one).
#[derive(Debug, Clone)]
pub struct AlsoFile {
    pub media: Media,
    pub column: String,
    /// The folder relative paths start from.
    pub root: PathBuf,
}

/// Columns the table readers fill themselves, which a table's own columns
/// cannot be read into.
pub const TABLE_OWN_COLUMNS: [&str; 4] = ["sample_id", "source", "position", "text"];

impl MediaSpec {
    /// A caption column named like a column the table reader fills (most
    /// often `text`) is read as the table's text, and the file path as an
    /// extra column instead.
    pub fn caption_is_text(&self) -> bool {
        self.caption_column
            .as_deref()
            .is_some_and(|c| TABLE_OWN_COLUMNS.contains(&c))
    }

    /// The table field the table reader reads as its text.
    pub fn inner_text_field(&self) -> String {
        match self.caption_is_text() {
            true => self.caption_column.clone().unwrap_or_default(),
            false => self.file_column.clone().unwrap_or_default(),
        }
    }

    /// The column of the table reader's batches that holds the file path.
    fn inner_path_column(&self) -> String {
        match self.caption_is_text() {
            true => self.file_column.clone().unwrap_or_default(),
            false => "text".into(),
        }
    }

    /// The column of the table reader's batches that holds the caption.
    fn inner_caption_column(&self) -> Option<String> {
        match self.caption_is_text() {
            true => Some("text".into()),
            false => self.caption_column.clone(),
        }
    }

    /// The extra columns the table reader must read besides its text.
    pub fn inner_columns(&self, columns: &[String]) -> Vec<String> {
        let mut out = columns.to_vec();
        let path = self
            .caption_is_text()
            .then(|| self.file_column.clone())
            .flatten();
        let caption = (!self.caption_is_text())
            .then(|| self.caption_column.clone())
            .flatten();
        let also = self.also.as_ref().map(|a| a.column.clone());
        for c in [path, caption, self.label_column.clone(), also]
            .into_iter()
            .flatten()
        {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    fn class_id(&self, name: &str) -> std::result::Result<i64, String> {
        if let Some(i) = self.classes.iter().position(|c| c == name) {
            return Ok(i as i64);
        }
        match name.trim().parse::<i64>() {
            Ok(id)
                if id >= 0 && (self.classes.is_empty() || (id as usize) < self.classes.len()) =>
            {
                Ok(id)
            }
            Ok(id) => Err(format!(
                "label {id} is not a class id (there are {} classes)",
                self.classes.len()
            )),
            Err(_) if self.classes.is_empty() => Err(format!(
                "label `{name}` is not an integer class id, and the input lists no `classes` to look it up in"
            )),
            Err(_) => Err(format!("label `{name}` is not one of the input's classes")),
        }
    }
}

/// The media record schema. `label` and `text` are there when some input
/// provides them; a second file's path and bytes (`audio_path`, `_audio`)
/// when the records are multimodal.
pub fn media_record_schema(
    media: Media,
    also: Option<Media>,
    columns: &[String],
    label: bool,
    text: bool,
) -> SchemaRef {
    let mut fields = vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("position", DataType::UInt64, false),
        Field::new("path", DataType::Utf8, false),
        Field::new(media.bytes_column(), DataType::Binary, false),
    ];
    if let Some(m) = also {
        fields.push(Field::new(m.path_column(), DataType::Utf8, false));
        fields.push(Field::new(m.bytes_column(), DataType::Binary, false));
    }
    if label {
        fields.push(Field::new("label", DataType::Int64, true));
    }
    if text {
        fields.push(Field::new("text", DataType::Utf8, true));
    }
    fields.extend(columns.iter().map(|c| Field::new(c, DataType::Utf8, true)));
    Arc::new(Schema::new(fields))
}

/// The class name a media file gets from its folder.
pub fn folder_label(path: &str) -> Option<String> {
    Path::new(path)
        .parent()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

/// Files of `media` under a folder, recursively, sorted.
pub fn walk_media(dir: &Path, media: Media) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Some(s) = path.to_str()
                && media.is_file(s)
            {
                out.push(s.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Read a whole file, refusing one over `max` bytes before reading it.
pub fn read_limited(path: &Path, max: u64) -> std::result::Result<Vec<u8>, Rejection> {
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ("missing_file", "no such file".to_string()),
        _ => ("unreadable_file", format!("cannot open: {e}")),
    })?;
    let size = f
        .metadata()
        .map_err(|e| ("unreadable_file", format!("cannot stat: {e}")))?
        .len();
    if size > max {
        return Err(file_too_large(size, max));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // A file that grows while read is cut at the limit and refused.
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ("unreadable_file", format!("cannot read: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(file_too_large(bytes.len() as u64, max));
    }
    Ok(bytes)
}

fn file_too_large(size: u64, max: u64) -> Rejection {
    (
        "file_too_large",
        format!("file is {size} bytes, over limits.max_file_bytes = {max}"),
    )
}

/// What a file's header says it decodes to, in bytes. Only the header is
/// read; a claim over the limits is rejected at decoding, so it counts as
/// the limit.
fn claimed_bytes(media: Media, data: &[u8], limits: &Limits, resample_to: Option<u32>) -> u64 {
    match media {
        Media::Image => {
            let header = || {
                image::ImageReader::new(std::io::Cursor::new(data))
                    .with_guessed_format()
                    .ok()
                    .and_then(|i| i.into_dimensions().ok())
            };
            // Hostile bytes are the decoder's to reject, not the reader's.
            let claimed = std::panic::catch_unwind(header)
                .ok()
                .flatten()
                .map_or(0, |(w, h)| {
                    (w as u64 * h as u64).min(limits.max_image_pixels)
                });
            claimed * 3
        }
        Media::Audio => {
            crate::stages::audio::decode::claimed_bytes(data, limits.max_audio_seconds, resample_to)
        }
    }
}

/// Builds batches in the media record schema.
struct MediaRecordBuilder {
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

struct Record<'a> {
    sample_id: String,
    source: &'a str,
    position: u64,
    path: &'a str,
    data: &'a [u8],
    label: Option<i64>,
    text: Option<&'a str>,
    /// The second file's path and bytes (multimodal records).
    also: Option<(&'a str, &'a [u8])>,
    /// Values of the extra columns, in the builder's order (see
    /// [`MediaRecordBuilder::extra_names`]); missing ones are null.
    extras: &'a [Option<&'a str>],
}

impl MediaRecordBuilder {
    fn new(media: Media, opts: &ReadOptions) -> Self {
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

    fn push(&mut self, r: Record) {
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
    fn extra_names(&self) -> impl Iterator<Item = &str> {
        self.extras.iter().map(|(n, _)| n.as_str())
    }

    fn is_full(&self, batch_rows: usize) -> bool {
        self.rows >= batch_rows
            || self.bytes >= BATCH_BYTES
            || self.decoded_budget.is_some_and(|b| self.decoded_bytes >= b)
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
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

fn reject(
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

/// Media files: the whole-file splits of an `images` or `audio` input that
/// follow one another in a task, read into batches of many samples (so that
/// stages batch, and mixing finds partners, across files).
pub struct MediaFileReader {
    paths: std::vec::IntoIter<String>,
    spec: MediaSpec,
    limits: Limits,
    batch_rows: usize,
    builder: MediaRecordBuilder,
    captions_only: bool,
}

impl MediaFileReader {
    pub fn new(splits: &[Split], spec: &MediaSpec, opts: &ReadOptions) -> Self {
        MediaFileReader {
            paths: splits
                .iter()
                .map(|s| s.path.clone())
                .collect::<Vec<_>>()
                .into_iter(),
            spec: spec.clone(),
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder: MediaRecordBuilder::new(spec.media, opts),
            captions_only: opts.captions_only,
        }
    }

    fn read(&mut self, path: &str, rejects: &mut RejectSink) -> Result<()> {
        let id = super::sample_id(path, 0);
        let stage = self.spec.media.read_stage();
        let fail = |kind: &str, msg: String| reject(stage, id.clone(), path, 0, kind, msg);
        let label = match self.spec.labels {
            LabelSource::None => None,
            LabelSource::Folder => {
                let name = folder_label(path).unwrap_or_default();
                match self.spec.class_id(&name) {
                    Ok(l) => Some(l),
                    Err(m) => return rejects.push(fail("unknown_label", m)),
                }
            }
        };
        match read_limited(Path::new(path), self.limits.max_file_bytes) {
            Ok(bytes) => self.builder.push(Record {
                sample_id: id.clone(),
                source: path,
                position: 0,
                path,
                data: &bytes,
                label,
                text: None,
                also: None,
                extras: &[],
            }),
            Err((kind, msg)) => rejects.push(fail(kind, msg))?,
        }
        Ok(())
    }
}

impl SourceReader for MediaFileReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        if self.captions_only {
            // Media files carry no captions.
            return Ok(None);
        }
        while !self.builder.is_full(self.batch_rows) {
            let Some(path) = self.paths.next() else { break };
            self.read(&path, rejects)?;
        }
        self.builder.finish()
    }
}

/// A WebDataset-style tar shard: consecutive members sharing a key (the
/// member name up to the first dot of its file name) are one sample. The
/// image or audio is the member with an extension of the input's media
/// (`.jpg`, `.flac`...); `.txt` is the caption or transcript,
/// `.cls` the class id, `.json` an object whose fields fill the input's
/// extra columns.
pub struct TarReader {
    path: String,
    spec: MediaSpec,
    limits: Limits,
    batch_rows: usize,
    builder: MediaRecordBuilder,
    /// Offset of the next member header.
    offset: u64,
    /// Keys already emitted: a key must not come back.
    keys: std::collections::HashSet<String>,
    /// The sample being gathered: its key, offset and members.
    pending: Option<TarSample>,
    done: bool,
    captions_only: bool,
}

/// A member's bytes, or why they were not read: `(kind, message)`.
type MemberBytes = std::result::Result<Vec<u8>, Rejection>;

#[derive(Default)]
struct TarSample {
    key: String,
    position: u64,
    /// `(extension, bytes or why they were not read)`.
    members: Vec<(String, MemberBytes)>,
}

fn tar_key(name: &str) -> (String, String) {
    let (dir, file) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    match file.find('.') {
        Some(i) => (
            format!("{dir}{}", &file[..i]),
            file[i + 1..].to_ascii_lowercase(),
        ),
        None => (name.to_string(), String::new()),
    }
}

impl TarReader {
    pub fn new(split: &Split, spec: &MediaSpec, opts: &ReadOptions) -> Self {
        TarReader {
            path: split.path.clone(),
            spec: spec.clone(),
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder: MediaRecordBuilder::new(spec.media, opts),
            offset: 0,
            keys: Default::default(),
            pending: None,
            done: false,
            captions_only: opts.captions_only,
        }
    }

    fn sample_id(&self, key: &str) -> String {
        format!("{}:{key}", self.path)
    }

    /// Turn a gathered sample into a record or a reject.
    fn emit(&mut self, s: TarSample, rejects: &mut RejectSink) -> Result<()> {
        if !self.keys.insert(s.key.clone()) {
            // Its members are not together: a second sample of the same key.
            return rejects.push(reject(
                "read_tar",
                format!("{}:{}@{}", self.path, s.key, s.position),
                &self.path,
                s.position,
                "duplicate_key",
                format!(
                    "key `{}` appears again at byte {}, after other keys",
                    s.key, s.position
                ),
            ));
        }
        let id = self.sample_id(&s.key);
        let fail = |kind: &str, msg: String| {
            reject("read_tar", id.clone(), &self.path, s.position, kind, msg)
        };
        let media = self.spec.media;
        let mut file: Option<(&str, &[u8])> = None;
        let mut text = None;
        let mut label = None;
        let mut json: Option<serde_json::Map<String, serde_json::Value>> = None;
        for (ext, data) in &s.members {
            let data = match data {
                Ok(d) => d,
                Err((kind, msg)) => {
                    return rejects.push(fail(kind, format!("member .{ext}: {msg}")));
                }
            };
            match ext.as_str() {
                e if media.has_extension(e) && file.is_none() => file = Some((e, data)),
                "txt" => match std::str::from_utf8(data) {
                    Ok(t) => text = Some(t.trim_end_matches(['\n', '\r'])),
                    Err(_) => {
                        return rejects
                            .push(fail("invalid_utf8", "member .txt is not UTF-8".into()));
                    }
                },
                "cls" => {
                    let t = String::from_utf8_lossy(data);
                    match self.spec.class_id(t.trim()) {
                        Ok(l) => label = Some(l),
                        Err(m) => {
                            return rejects
                                .push(fail("unknown_label", format!("member .cls: {m}")));
                        }
                    }
                }
                "json" => match serde_json::from_slice(data) {
                    Ok(serde_json::Value::Object(m)) => json = Some(m),
                    _ => {
                        return rejects.push(fail(
                            "invalid_json",
                            "member .json is not a JSON object".into(),
                        ));
                    }
                },
                _ => {}
            }
        }
        let Some((ext, bytes)) = file else {
            return rejects.push(fail(
                &format!("no_{}", media.name()),
                format!(
                    "key `{}` has no {} member ({})",
                    s.key,
                    media.name(),
                    media.extensions().join(", ")
                ),
            ));
        };
        let extra_values: Vec<Option<String>> = self
            .builder
            .extra_names()
            .map(|name| {
                json.as_ref().and_then(|m| m.get(name)).map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            })
            .collect();
        let extras: Vec<Option<&str>> = extra_values.iter().map(Option::as_deref).collect();
        let member = format!("{}/{}.{ext}", self.path, s.key);
        self.builder.push(Record {
            sample_id: id.clone(),
            source: &self.path,
            position: s.position,
            path: &member,
            data: bytes,
            label,
            text,
            also: None,
            extras: &extras,
        });
        Ok(())
    }
}

impl TarReader {
    /// Whether a member of `sample` with extension `ext` is worth reading:
    /// the first image or audio file, `.txt`, `.cls`, `.json`; others are
    /// skipped unread.
    fn wanted(media: Media, sample: Option<&TarSample>, ext: &str) -> bool {
        let seen =
            |f: &dyn Fn(&str) -> bool| sample.is_some_and(|s| s.members.iter().any(|(e, _)| f(e)));
        if media.has_extension(ext) {
            return !seen(&|e: &str| media.has_extension(e));
        }
        matches!(ext, "txt" | "cls" | "json") && !seen(&|e: &str| e == ext)
    }

    /// Read members of the shard (`file`, opened once a batch) from the
    /// saved offset until the batch is full or the shard ends; finished
    /// samples go to the builder or to rejects.
    fn fill(&mut self, mut file: File, rejects: &mut RejectSink) -> Result<Option<String>> {
        use std::io::{Seek, SeekFrom};
        let base = self.offset;
        file.seek(SeekFrom::Start(base))
            .map_err(|e| crate::error::Error::io(format!("seek {}", self.path), e))?;
        let max = self.limits.max_file_bytes;
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => return Ok(Some(e.to_string())),
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => return Ok(Some(e.to_string())),
            };
            let size = entry.size();
            let next = base + entry.raw_file_position() + size.div_ceil(512) * 512;
            if !entry.header().entry_type().is_file() {
                self.offset = next;
                continue;
            }
            let name = match entry.path() {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(e) => return Ok(Some(format!("bad member name: {e}"))),
            };
            let (key, ext) = tar_key(&name);
            let position = base + entry.raw_header_position();
            if self.pending.as_ref().is_some_and(|p| p.key != key) {
                let done = self.pending.take().expect("checked");
                self.emit(done, rejects)?;
            }
            let sample = self.pending.as_ref().filter(|p| p.key == key);
            if Self::wanted(self.spec.media, sample, &ext) {
                let data = if self.captions_only && self.spec.media.has_extension(&ext) {
                    Ok(Vec::new())
                } else if size > max {
                    Err(file_too_large(size, max))
                } else {
                    let mut buf = Vec::with_capacity(size as usize);
                    if let Err(e) = entry.read_to_end(&mut buf) {
                        return Ok(Some(format!("cannot read member {name}: {e}")));
                    }
                    Ok(buf)
                };
                match &mut self.pending {
                    Some(p) => p.members.push((ext, data)),
                    None => {
                        self.pending = Some(TarSample {
                            key,
                            position,
                            members: vec![(ext, data)],
                        })
                    }
                }
            } else if self.pending.is_none() {
                self.pending = Some(TarSample {
                    key,
                    position,
                    members: Vec::new(),
                });
            }
            self.offset = next;
            if self.builder.is_full(self.batch_rows) {
                return Ok(None);
            }
        }
        self.done = true;
        Ok(None)
    }
}

impl SourceReader for TarReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        // A call may finish no sample (one large sample, or all rejected):
        // read on until a batch has rows or the shard ends.
        while !self.done {
            let failure = match File::open(&self.path) {
                Ok(file) => self.fill(file, rejects)?,
                Err(e) => {
                    self.done = true;
                    rejects.push(reject(
                        "read_tar",
                        format!("{}:*", self.path),
                        &self.path,
                        0,
                        "unreadable_file",
                        format!("cannot open: {e}"),
                    ))?;
                    return Ok(None);
                }
            };
            if failure.is_some() {
                self.done = true;
            }
            if self.done {
                if let Some(last) = self.pending.take() {
                    self.emit(last, rejects)?;
                }
                return finish_with(self, failure, rejects);
            }
            if let Some(batch) = self.builder.finish()? {
                return Ok(Some(batch));
            }
        }
        Ok(None)
    }
}

/// The last batch of a tar, and one reject for the unreadable rest of it.
fn finish_with(
    r: &mut TarReader,
    failure: Option<String>,
    rejects: &mut RejectSink,
) -> Result<Option<RecordBatch>> {
    if let Some(msg) = failure {
        rejects.push(reject(
            "read_tar",
            format!("{}:*", r.path),
            &r.path,
            0,
            "bad_tar",
            format!("the archive is damaged; its remaining members are not read: {msg}"),
        ))?;
    }
    r.builder.finish()
}

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
                    a.root.join(file).to_string_lossy().into_owned(),
                    Err((
                        "missing_file",
                        format!("the row names no file in `{}`", a.column),
                    )),
                ),
                false => self.read_named(&a.root, file),
            };
            match read {
                Ok(b) => also = Some((path, b)),
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
            path: &full_str,
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
        root: &Path,
        file: &str,
    ) -> (String, std::result::Result<Vec<u8>, Rejection>) {
        let full = match Path::new(file).is_absolute() {
            true => PathBuf::from(file),
            false => root.join(file),
        };
        let read = match self.captions_only {
            true => Ok(Vec::new()),
            false => read_limited(&full, self.limits.max_file_bytes),
        };
        (full.to_string_lossy().into_owned(), read)
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

/// Class names found from folder names, sorted, for `labels = "folder"`.
pub fn folder_classes(files: &[String]) -> Vec<String> {
    let mut names: Vec<String> = files.iter().filter_map(|f| folder_label(f)).collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(
            tar_key("a/b.c/x1.seg.jpg"),
            ("a/b.c/x1".into(), "seg.jpg".into())
        );
        assert_eq!(tar_key("k.CLS"), ("k".into(), "cls".into()));
    }

    #[test]
    fn labels_by_name_or_id() {
        let spec = MediaSpec {
            media: Media::Image,
            labels: LabelSource::Folder,
            file_column: None,
            root: PathBuf::new(),
            caption_column: None,
            label_column: None,
            classes: Arc::new(vec!["bird".into(), "cat".into()]),
            also: None,
        };
        assert_eq!(spec.class_id("cat"), Ok(1));
        assert_eq!(spec.class_id("0"), Ok(0));
        assert!(spec.class_id("7").is_err());
        assert!(spec.class_id("dog").is_err());
    }
}
