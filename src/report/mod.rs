//! `kiln report PATH`: one self-contained HTML page of a dataset or of a
//! training run, to look at before training and after.
//!
//! - a dataset (a folder with `manifest.json`): [`dataset`] — the summary
//!   and the invariant `in = out + rejected + filtered`, the schema with
//!   its HuggingFace features, the pipeline that made it, each shard's
//!   state, the rejects by stage and kind, statistics, and a seeded sample
//!   of rows, each with its copies ([`rows`]);
//! - a training run (a folder with `metrics.jsonl`): [`train`].
//!
//! The page needs no network: style inline, images and clips as `data:`
//! URLs, charts as inline SVG ([`crate::chart`], drawn with `plotters`),
//! spectrograms as pictures inside SVG axes ([`spectrogram`]). Its size
//! grows with `--samples`, not with the dataset.

pub mod dataset;
pub mod html;
pub mod row;
pub mod rows;
pub mod spectrogram;
pub mod train;

use std::path::Path;

use crate::error::{Error, Result};

/// What to show.
#[derive(Debug, Clone)]
pub struct Options {
    /// Originals to sample (each shown with its copies).
    pub samples: usize,
    /// The sample's seed.
    pub seed: u64,
    /// Read every shard: exact statistics, every checksum verified.
    pub full: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            samples: 12,
            seed: 0,
            full: false,
        }
    }
}

/// A page and what making it took.
#[derive(Debug)]
pub struct Outcome {
    pub html: String,
    /// Bytes read from the dataset's files (manifest and metadata aside).
    pub bytes_read: u64,
    /// The shards read, by file name.
    pub shards_read: Vec<String>,
    /// What the page reports as wrong.
    pub problems: Vec<String>,
}

/// The page of `path`: a training run's when it holds `metrics.jsonl`,
/// else a dataset's.
pub fn report(path: &Path, opts: &Options) -> Result<Outcome> {
    if path.join("metrics.jsonl").is_file() {
        train::report(path)
    } else if path.is_dir() {
        dataset::report(path, opts)
    } else {
        Err(Error::Config(format!(
            "{} is not a dataset or a training output folder",
            path.display()
        )))
    }
}

/// An image as PNG bytes.
pub fn png(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding into memory");
    out.into_inner()
}

/// An image as JPEG bytes (quality 85), alpha dropped.
pub fn jpeg(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    let rgb = image::DynamicImage::ImageRgb8(img.to_rgb8());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&rgb)
        .expect("JPEG encoding into memory");
    out
}
