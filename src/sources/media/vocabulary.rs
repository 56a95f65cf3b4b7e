//! The media vocabulary: what a media input holds, where its labels and
//! captions come from, and the media record schema.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::sources::input::LabelSource;

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

    pub(super) fn is_file(self, path: &str) -> bool {
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
    pub(super) fn read_stage(self) -> &'static str {
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
    /// Tables: the folder relative file paths start from. Folders and
    /// globs of media files: the folder they are listed under.
    pub root: String,
    /// Files may resolve outside `root`.
    pub allow_outside_root: bool,
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
    pub root: String,
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
    pub(super) fn inner_path_column(&self) -> String {
        match self.caption_is_text() {
            true => self.file_column.clone().unwrap_or_default(),
            false => "text".into(),
        }
    }

    /// The column of the table reader's batches that holds the caption.
    pub(super) fn inner_caption_column(&self) -> Option<String> {
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

    pub(super) fn class_id(&self, name: &str) -> std::result::Result<i64, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_by_name_or_id() {
        let spec = MediaSpec {
            media: Media::Image,
            labels: LabelSource::Folder,
            file_column: None,
            root: String::new(),
            allow_outside_root: false,
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
