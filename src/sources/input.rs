//! The `[[inputs]]` table: where the records come from and how to read them.

use serde::{Deserialize, Serialize};

use crate::sources::media::Media;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    Jsonl,
    Text,
    Csv,
    Parquet,
    /// Image files: a folder (walked recursively) or a glob.
    Images,
    /// WebDataset-style tar shards: `key.jpg` (or `key.flac`...) with
    /// `key.txt`/`key.json`/`key.cls`.
    Tar,
    /// Audio files: a folder (walked recursively) or a glob.
    Audio,
}

impl InputFormat {
    /// Guess the format from a file name; `None` when the extension says nothing.
    pub fn from_path(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        let ext = lower.rsplit('.').next()?;
        match ext {
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "txt" | "text" => Some(Self::Text),
            "csv" | "tsv" => Some(Self::Csv),
            "parquet" | "pq" => Some(Self::Parquet),
            "tar" => Some(Self::Tar),
            e if Media::Image.has_extension(e) => Some(Self::Images),
            e if Media::Audio.has_extension(e) => Some(Self::Audio),
            _ => None,
        }
    }
}

impl InputFormat {
    /// Whether each file of the input is one media sample (image or audio
    /// files), read whole.
    pub fn is_media_files(self) -> bool {
        matches!(self, Self::Images | Self::Audio)
    }

    /// Tables, whose rows can name media files.
    pub fn is_table(self) -> bool {
        matches!(self, Self::Jsonl | Self::Csv | Self::Parquet)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentMode {
    /// Each non-blank line is a document.
    #[default]
    Lines,
    /// Each file is one document.
    File,
}

/// One `[[inputs]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// A local path or a glob (`corpus/*.jsonl`, `data/**/*.txt`), or the
    /// same as a URL (`s3://bucket/corpus/*.jsonl`, `https://host/a.tar`).
    pub path: String,
    /// The input's name in sample ids. With several inputs, ids are
    /// `NAME/FILE:POSITION`, and NAME is the input's index when not given.
    #[serde(default)]
    pub name: Option<String>,
    /// Inferred from the extension when omitted.
    #[serde(default)]
    pub format: Option<InputFormat>,
    /// JSONL, CSV and Parquet: the field that holds the document.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Text files: one document per line, or per file.
    #[serde(default)]
    pub document: DocumentMode,
    /// Extra fields to keep as string columns (for SQL and for the output).
    #[serde(default)]
    pub columns: Vec<String>,
    /// CSV: the field delimiter (a single byte).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Tables: the column naming an image file, which is read and joined to
    /// its row. Relative paths are resolved against `image_root`.
    #[serde(default)]
    pub image_column: Option<String>,
    /// Tables with `image_column`: the folder image paths are relative to;
    /// by default the table's own folder.
    #[serde(default)]
    pub image_root: Option<String>,
    /// Tables: the column naming an audio file, read and joined to its row
    /// like `image_column`. Relative paths are resolved against `audio_root`.
    #[serde(default)]
    pub audio_column: Option<String>,
    /// Tables with `audio_column`: the folder audio paths are relative to;
    /// by default the table's own folder.
    #[serde(default)]
    pub audio_root: Option<String>,
    /// Tables with `image_column` or `audio_column`: the column holding the
    /// caption or transcript (`transcript_column` is the same key).
    #[serde(default, alias = "transcript_column")]
    pub caption_column: Option<String>,
    /// Tables with `image_column` or `audio_column`: the column holding the
    /// label (a class name from `classes`, or an integer id).
    #[serde(default)]
    pub label_column: Option<String>,
    /// Image and audio files: where the label comes from. `folder` (the
    /// default) takes the parent folder's name, as torchvision's
    /// ImageFolder and datasets' AudioFolder do.
    #[serde(default)]
    pub labels: LabelSource,
    /// Class names, in id order. Image folders find them from the folder
    /// names when this is not given.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Image and audio folders and globs: a file or a link that resolves
    /// outside the input's folder is a reject (`path_outside_root`), and a
    /// link to a folder outside it is not walked, unless this is true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_outside_root: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// The name of the folder the image is in.
    #[default]
    Folder,
    /// No label.
    None,
}

fn default_text_field() -> String {
    "text".into()
}

fn default_delimiter() -> String {
    ",".into()
}
