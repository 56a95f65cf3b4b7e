//! Local files as kiln's location strings, and opening them safely.
//!
//! kiln names files by strings: in `source`, sample ids, plan.json and the
//! rejects. A local name that is not UTF-8 (a Latin-1 archive, an old tar
//! file) is written losslessly: each byte that is not part of valid UTF-8
//! becomes `\xNN` (two uppercase hex digits) and, in such a name only, each
//! `\` becomes `\x5C`. So `caf\xE9.jpg` is the Latin-1 `café.jpg`, and the
//! string opens exactly the file it was listed from. A name that is UTF-8
//! is itself, unchanged.
//!
//! Opening never blocks on a FIFO and never reads a device: only regular
//! files (or links to them) are read; anything else is [`SpecialFile`].

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// kiln's string for a name given as bytes (a path, a tar member name).
pub fn bytes_string(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_string();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\x5C"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// kiln's string for a local path.
pub fn path_string(path: &Path) -> String {
    bytes_string(path.as_os_str().as_bytes())
}

/// The bytes a string written by [`bytes_string`] stands for, when it is
/// the escaped form of a name that is not UTF-8 (`None` otherwise: the
/// string is itself).
pub fn escaped_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.contains("\\x") {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 2..i + 4).and_then(|h| {
            let h = std::str::from_utf8(h).ok()?;
            (h.bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)))
            .then(|| u8::from_str_radix(h, 16).ok())
            .flatten()
        });
        match (b[i], b.get(i + 1), hex) {
            (b'\\', Some(b'x'), Some(v)) => {
                out.push(v);
                i += 4;
            }
            (b'\\', _, _) => return None,
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    // Escaped names always have bytes that are not UTF-8.
    std::str::from_utf8(&out).is_err().then_some(out)
}

/// The local path a location string names: itself, or, for the escaped form
/// of a name that is not UTF-8, that name's bytes. A file that exists under
/// the literal string wins (listing refuses an input where both exist).
pub fn local_path(location: &str) -> PathBuf {
    match escaped_bytes(location) {
        Some(bytes) if std::fs::symlink_metadata(location).is_err() => {
            PathBuf::from(OsString::from_vec(bytes))
        }
        _ => PathBuf::from(location),
    }
}

/// A listed path's string, refusing a name whose escaped form is also
/// the literal name of another file (the two would be one string).
pub fn listed(path: &Path) -> std::io::Result<String> {
    let s = path_string(path);
    if path.to_str().is_none() && std::fs::symlink_metadata(&s).is_ok() {
        return Err(std::io::Error::other(format!(
            "two files are named `{s}` in kiln's escaped form of names that are not UTF-8 (one has that name, one has bytes that are not UTF-8); rename one"
        )));
    }
    Ok(s)
}

/// The local files a glob names, sorted. `*`, `?` and `[...]` do not cross
/// `/`; `**` matches any number of folders. The walk starts at the folder
/// before the first wildcard and goes no deeper than the pattern (any depth
/// with `**`); names that are not UTF-8 are matched and listed in their
/// escaped form; a link to a folder is followed once. A folder it cannot
/// list is an error, not a silent gap.
pub fn glob(pattern: &str) -> Result<Vec<String>, String> {
    let pat = glob::Pattern::new(pattern).map_err(|e| format!("invalid glob `{pattern}`: {e}"))?;
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let root = super::glob_root(pattern);
    let depth = match pattern.contains("**") {
        true => usize::MAX,
        false => pattern[root.len()..].split('/').count(),
    };
    let start = match root.is_empty() {
        true => PathBuf::from("."),
        false => local_path(&root),
    };
    let mut seen = std::collections::HashSet::new();
    if let Ok(real) = std::fs::canonicalize(&start) {
        seen.insert(real);
    }
    let mut out = Vec::new();
    // (folder to read, its name in the listed paths, depth of its entries)
    if !start.exists() {
        // Nothing to match: the caller says the glob matches nothing.
        return Ok(Vec::new());
    }
    let mut stack = vec![(start, PathBuf::from(&root), 1)];
    while let Some((dir, shown, level)) = stack.pop() {
        let cannot = |e: std::io::Error| format!("cannot list `{}`: {e}", path_string(&shown));
        for entry in std::fs::read_dir(&dir).map_err(cannot)? {
            let entry = entry.map_err(cannot)?;
            let name = shown.join(entry.file_name());
            let t = entry.file_type().map_err(cannot)?;
            let is_dir = match t.is_symlink() {
                true => std::fs::canonicalize(entry.path())
                    .ok()
                    .filter(|real| real.is_dir())
                    .map(|real| seen.insert(real)),
                false => t.is_dir().then_some(true),
            };
            match is_dir {
                Some(true) if level < depth => stack.push((entry.path(), name, level + 1)),
                Some(_) => {}
                None => {
                    let s = listed(&name).map_err(|e| e.to_string())?;
                    if pat.matches_with(&s, opts) {
                        out.push(s);
                    }
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Not a regular file: what it is instead.
#[derive(Debug)]
pub struct SpecialFile(pub &'static str);

impl std::fmt::Display for SpecialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a regular file but {}", self.0)
    }
}

impl std::error::Error for SpecialFile {}

/// What a non-regular file type is, in words (`None` for a regular file).
pub fn special_kind(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a folder")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else {
        Some("an unknown kind of file")
    }
}

/// Open a local regular file for reading (following links). A FIFO is
/// opened without waiting for a writer and then refused, as are devices,
/// sockets and folders: the error carries a [`SpecialFile`].
pub fn open_regular(location: &str) -> std::io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(local_path(location))?;
    if let Some(what) = special_kind(f.metadata()?.file_type()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            SpecialFile(what),
        ));
    }
    Ok(f)
}

/// `O_NONBLOCK` (the same value on every Linux architecture kiln builds
/// for but alpha, sparc and parisc).
const O_NONBLOCK: i32 = 0o4000;

/// The [`SpecialFile`] an error carries, if any.
pub fn special_file(e: &std::io::Error) -> Option<&SpecialFile> {
    e.get_ref().and_then(|i| i.downcast_ref::<SpecialFile>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_utf8_round_trip_and_utf8_names_are_unchanged() {
        for name in [
            &b"caf\xe9.jpg"[..],
            b"a\\b\xff\xfe",
            b"\\x41\x80",
            b"\xc3",
            b"ok\xc3\xa9\xe9",
        ] {
            let s = bytes_string(name);
            assert_eq!(escaped_bytes(&s).as_deref(), Some(name), "{s}");
        }
        assert_eq!(bytes_string(b"caf\xe9.jpg"), "caf\\xE9.jpg");
        for s in ["café.jpg", "a\\x41.jpg", "plain", "a\\xZZ", "\\x"] {
            assert_eq!(bytes_string(s.as_bytes()), s);
            assert_eq!(escaped_bytes(s), None, "{s}");
        }
    }
}
