//! Media files on disk: the folder walk, folder labels, size-limited reads
//! and what a file's header claims it decodes to.

use std::path::Path;

use super::Media;
use crate::limits::Limits;
use crate::rejects::Rejection;
use crate::storage::local::{listed, local_path};

/// The class name a media file gets from its folder.
pub fn folder_label(path: &str) -> Option<String> {
    Path::new(path)
        .parent()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

/// Every entry under a folder (or a URL prefix), recursively, sorted: each
/// is a sample or a reject, so that `samples in` counts them all. Files of
/// other kinds, special files, broken or looping links are listed too, for
/// the reader to reject with a reason ([`check_entry`]). Names that are not
/// UTF-8 are kept losslessly (`storage::local`). A link to a folder is
/// followed once: into a folder not walked yet and inside `dir` (anywhere
/// with `allow_outside_root`); otherwise it is listed as an entry.
pub fn walk_media(dir: &str, allow_outside_root: bool) -> std::io::Result<Vec<String>> {
    if crate::storage::is_url(dir) {
        return Ok(crate::storage::list(dir)?
            .into_iter()
            .map(|(name, _)| name)
            .collect());
    }
    let root = std::fs::canonicalize(local_path(dir))?;
    let mut seen = std::collections::HashSet::new();
    seen.insert(root.clone());
    let mut out = Vec::new();
    let mut stack = vec![local_path(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let t = entry.file_type()?;
            let folder = match t.is_symlink() {
                true => std::fs::canonicalize(&path)
                    .ok()
                    .filter(|real| real.is_dir())
                    .filter(|real| allow_outside_root || real.starts_with(&root))
                    .filter(|real| seen.insert(real.clone())),
                false => t.is_dir().then(|| path.clone()),
            };
            match folder {
                Some(_) => stack.push(path),
                None => out.push(listed(&path)?),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The media files among listed entries.
pub fn media_files(files: &[String], media: Media) -> impl Iterator<Item = &String> {
    files.iter().filter(move |f| media.is_file(f))
}

/// Why a listed folder entry is not read, if it is not: one of
/// [`check_local`]'s reasons, or not a file of `media`. Special files are
/// refused when opened ([`read_limited`]).
pub fn check_entry(path: &str, media: Media, root: Option<&Path>) -> Result<(), Rejection> {
    check_local(path, root)?;
    match media.is_file(path) {
        true => Ok(()),
        false => Err((
            "unsupported_file",
            format!(
                "not an {} file ({})",
                media.name(),
                media.extensions().join(", ")
            ),
        )),
    }
}

/// Why a local file is not read, if it is not: a link that is broken,
/// loops or leads to a folder, a folder, or a file that resolves outside
/// `root` (`None`: anywhere is allowed).
pub fn check_local(path: &str, root: Option<&Path>) -> Result<(), Rejection> {
    if crate::storage::is_url(path) {
        return Ok(());
    }
    let p = local_path(path);
    let target = || {
        std::fs::read_link(&p)
            .map(|t| crate::storage::local::path_string(&t))
            .unwrap_or_default()
    };
    match std::fs::metadata(&p) {
        Err(e) if e.raw_os_error() == Some(ELOOP) => {
            return Err(("symlink_loop", "a link that leads back to itself".into()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(match std::fs::symlink_metadata(&p) {
                Ok(_) => (
                    "missing_file",
                    format!("a link to `{}`, which does not exist", target()),
                ),
                Err(_) => ("missing_file", "no such file".into()),
            });
        }
        Err(e) => return Err((unreadable(&e), format!("cannot read: {e}"))),
        Ok(_) => {}
    }
    let real =
        std::fs::canonicalize(&p).map_err(|e| (unreadable(&e), format!("cannot resolve: {e}")))?;
    if let Some(root) = root
        && !real.starts_with(root)
    {
        return Err((
            "path_outside_root",
            format!(
                "resolves to `{}`, outside `{}` (set allow_outside_root = true on the input to read it)",
                crate::storage::local::path_string(&real),
                crate::storage::local::path_string(root),
            ),
        ));
    }
    if real.is_dir() {
        return Err(
            match std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) {
                true => (
                    "symlink_loop",
                    format!("a link to the folder `{}`, which is read already", target()),
                ),
                false => ("unreadable_file", "a folder, not a file".into()),
            },
        );
    }
    Ok(())
}

/// The kind of a file that cannot be read: refused permissions are the
/// run's fault (the reader stops, [`crate::sources::denied`]).
fn unreadable(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => crate::sources::PERMISSION_DENIED,
        _ => "unreadable_file",
    }
}

/// `ELOOP` on Linux: too many levels of symbolic links.
const ELOOP: i32 = 40;

/// Read a whole file, refusing one over `max` bytes before reading it.
pub fn read_limited(location: &str, max: u64) -> std::result::Result<Vec<u8>, Rejection> {
    match crate::storage::read_limited(location, max) {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(size)) => Err(file_too_large(size, max)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(("missing_file", "no such file".to_string()))
        }
        Err(e) => match crate::storage::local::special_file(&e) {
            Some(special) => Err(("special_file", special.to_string())),
            None => Err((unreadable(&e), format!("cannot read: {e}"))),
        },
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

/// Class names found from the folder names of the media files among
/// `files`, sorted, for `labels = "folder"`.
pub fn folder_classes(files: &[String], media: Media) -> Vec<String> {
    let mut names: Vec<String> = media_files(files, media)
        .filter_map(|f| folder_label(f))
        .collect();
    names.sort();
    names.dedup();
    names
}
