//! `[limits]`: the sizes past which hostile input becomes a reject instead
//! of a crash. Readers and stages both check them.

use serde::{Deserialize, Serialize};

/// Limits that turn hostile input into rejects instead of crashes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest line of a line-oriented file (text lines, JSONL, CSV record).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Longest document (a text field or a whole file).
    #[serde(default = "default_max_document_bytes")]
    pub max_document_bytes: usize,
    /// Largest media file (an image, a tar member) read.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Largest image, in pixels, as its header claims: bigger ones are
    /// rejected before they are decoded (decompression bombs).
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
    /// Longest audio clip, in seconds, as its header claims or as it
    /// decodes: longer ones are rejected without being decoded whole.
    #[serde(default = "default_max_audio_seconds")]
    pub max_audio_seconds: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: default_max_line_bytes(),
            max_document_bytes: default_max_document_bytes(),
            max_file_bytes: default_max_file_bytes(),
            max_image_pixels: default_max_image_pixels(),
            max_audio_seconds: default_max_audio_seconds(),
        }
    }
}

fn default_max_file_bytes() -> u64 {
    64 << 20
}

fn default_max_image_pixels() -> u64 {
    64_000_000
}

fn default_max_audio_seconds() -> f64 {
    600.0
}

fn default_max_line_bytes() -> usize {
    16 << 20
}

fn default_max_document_bytes() -> usize {
    16 << 20
}
