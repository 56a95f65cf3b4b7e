//! Media files on disk: the folder walk, folder labels, size-limited reads
//! and what a file's header claims it decodes to.

use std::path::Path;

use super::Media;
use crate::limits::Limits;
use crate::rejects::Rejection;

/// The class name a media file gets from its folder.
pub fn folder_label(path: &str) -> Option<String> {
    Path::new(path)
        .parent()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

/// Files of `media` under a folder (or a URL prefix), recursively, sorted.
pub fn walk_media(dir: &str, media: Media) -> std::io::Result<Vec<String>> {
    if crate::storage::is_url(dir) {
        return Ok(crate::storage::list(dir)?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| media.is_file(name))
            .collect());
    }
    let mut out = Vec::new();
    let mut stack = vec![Path::new(dir).to_path_buf()];
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
pub fn read_limited(location: &str, max: u64) -> std::result::Result<Vec<u8>, Rejection> {
    match crate::storage::read_limited(location, max) {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(size)) => Err(file_too_large(size, max)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(("missing_file", "no such file".to_string()))
        }
        Err(e) => Err(("unreadable_file", format!("cannot read: {e}"))),
    }
}

pub(super) fn file_too_large(size: u64, max: u64) -> Rejection {
    (
        "file_too_large",
        format!("file is {size} bytes, over limits.max_file_bytes = {max}"),
    )
}

/// What a file's header says it decodes to, in bytes. Only the header is
/// read; a claim over the limits is rejected at decoding, so it counts as
/// the limit.
pub(super) fn claimed_bytes(
    media: Media,
    data: &[u8],
    limits: &Limits,
    resample_to: Option<u32>,
) -> u64 {
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
            crate::codec::audio::claimed_bytes(data, limits.max_audio_seconds, resample_to)
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
