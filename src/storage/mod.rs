//! Where bytes live: local paths and object-store URLs behind one small,
//! synchronous interface that the readers, the engine and the trainer use.
//!
//! A *location* is a string: a local path (`data/docs.jsonl`) or a URL,
//! `s3://bucket/key` (also `s3a://`), `gs://bucket/key`, `az://container/key`
//! (also `abfs://`, `abfss://`, `azure://`), `http://` or `https://host/path`.
//! HTTP serves explicit files only: it cannot list, so it takes no globs or
//! folders.
//!
//! Remote access goes through the `object_store` crate (feature `cloud`, on
//! by default). Credentials come from the environment the way each cloud's
//! own tools read them (`AWS_*`, `GOOGLE_*`, `AZURE_*`; `AWS_ENDPOINT_URL`
//! for S3-compatible stores) and never from the pipeline file, whose
//! `[storage]` table sets only the endpoint, region, plain-HTTP permission,
//! timeout and retries. A URL with a user name, a password or a query
//! string is refused, so that no secret reaches a log line, an error, the
//! plan or the manifest.
//!
//! Every request times out (30 s by default) and is retried with
//! exponential backoff on throttling, 5xx answers and dropped connections.
//! Large objects are read by ranges ([`open`] returns a buffered reader
//! that fetches 8 MiB at a time), and files are uploaded as multipart
//! uploads straight from a local spool file, so no shard is held in memory.

pub mod local;
#[cfg(feature = "cloud")]
mod remote;

use std::io::{Read, Seek};
use std::path::Path;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// The `[storage]` table of a pipeline file. It never holds a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The endpoint of an S3-compatible store (MinIO, Ceph, R2...) or of
    /// an Azure emulator; by default the environment's
    /// (`AWS_ENDPOINT_URL`) or the cloud's own.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The S3 region; by default `AWS_REGION`.
    #[serde(default)]
    pub region: Option<String>,
    /// Allow plain `http://` endpoints (a store on the local network).
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// Seconds before one request is abandoned (and retried): 30 by default.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Retries of one failed request, with exponential backoff: 10 by default.
    #[serde(default)]
    pub retries: Option<usize>,
}

static CONFIG: RwLock<Option<StorageConfig>> = RwLock::new(None);

/// Set the process's storage settings (from the pipeline's `[storage]`).
/// Stores already opened keep theirs.
pub fn configure(config: &StorageConfig) {
    *CONFIG.write().expect("not poisoned") = Some(config.clone());
}

#[cfg(feature = "cloud")]
fn settings() -> StorageConfig {
    CONFIG
        .read()
        .expect("not poisoned")
        .clone()
        .unwrap_or_default()
}

/// The URL schemes kiln reads and writes.
pub const SCHEMES: [&str; 10] = [
    "s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "adl", "http", "https",
];

/// Whether `location` is a URL rather than a local path.
pub fn is_url(location: &str) -> bool {
    scheme(location).is_some()
}

/// The scheme of a URL (`s3` of `s3://b/k`), lower-cased.
fn scheme(location: &str) -> Option<String> {
    let (scheme, _) = location.split_once("://")?;
    let ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    ok.then(|| scheme.to_ascii_lowercase())
}

/// Whether `location` names a store that can list (every URL but HTTP).
pub fn can_list(location: &str) -> bool {
    !matches!(scheme(location).as_deref(), Some("http" | "https"))
}

/// Check a location before anything is read: a known scheme, a bucket, and
/// no credentials or query in the URL.
pub fn check(location: &str) -> Result<(), String> {
    let Some(scheme) = scheme(location) else {
        return Ok(());
    };
    if !SCHEMES.contains(&scheme.as_str()) {
        return Err(format!(
            "`{location}`: unknown URL scheme `{scheme}://`; kiln reads s3://, gs://, az:// (abfs://), http(s):// and local paths"
        ));
    }
    let rest = &location[scheme.len() + 3..];
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("`{location}` names no bucket or host"));
    }
    // `abfs://container@account.dfs.core.windows.net/...` names its account
    // that way; elsewhere an `@` is a user name.
    if authority.contains('@') && !matches!(scheme.as_str(), "abfs" | "abfss") {
        return Err(format!(
            "`{}`: a URL must not carry a user name or password; give credentials in the environment",
            redact(location)
        ));
    }
    if location.contains('?') || location.contains('#') {
        return Err(format!(
            "`{}`: a URL must not carry a query or fragment (signed URLs hold secrets); give credentials in the environment",
            redact(location)
        ));
    }
    if cfg!(not(feature = "cloud")) {
        return Err(format!(
            "`{location}`: this kiln was built without the `cloud` feature, so it reads and writes local paths only"
        ));
    }
    Ok(())
}

/// A URL with any user information and query removed, for messages.
pub fn redact(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}{path}")
}

/// `root` and a relative name under it. In a URL, `.` and `..` segments
/// are resolved (object keys have no such folders); `..` stops at the
/// bucket.
pub fn join(root: &str, name: &str) -> String {
    if is_url(root) {
        let (scheme, rest) = root.split_once("://").expect("a URL");
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        let mut parts: Vec<&str> = key.split('/').filter(|p| !p.is_empty()).collect();
        for part in name.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        format!("{scheme}://{authority}/{}", parts.join("/"))
    } else {
        Path::new(root).join(name).to_string_lossy().into_owned()
    }
}

/// The folder a location is in (`s3://b/a/x.jsonl` -> `s3://b/a`).
pub fn parent(location: &str) -> String {
    if is_url(location) {
        match location.trim_end_matches('/').rsplit_once('/') {
            Some((p, _)) if p.ends_with(':') || p.ends_with(":/") => location.to_string(),
            Some((p, _)) => p.to_string(),
            None => location.to_string(),
        }
    } else {
        Path::new(location)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// What is known about an object or file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    /// Modification time, nanoseconds since the epoch (0 when unknown).
    pub modified_ns: u128,
    /// The store's entity tag (remote objects).
    pub etag: Option<String>,
}

/// A byte source that can seek: a local file or a ranged remote reader.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

#[cfg(not(feature = "cloud"))]
fn unsupported(location: &str) -> std::io::Error {
    std::io::Error::other(
        check(location)
            .err()
            .unwrap_or_else(|| format!("`{}` cannot be read", redact(location))),
    )
}

/// Size and version of a file or object.
pub fn stat(location: &str) -> std::io::Result<Meta> {
    if is_url(location) {
        #[cfg(feature = "cloud")]
        return remote::stat(location);
        #[cfg(not(feature = "cloud"))]
        return Err(unsupported(location));
    }
    let m = std::fs::metadata(local::local_path(location))?;
    if m.is_dir() {
        return Err(std::io::Error::other("is a directory"));
    }
    if let Some(what) = local::special_kind(m.file_type()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            local::SpecialFile(what),
        ));
    }
    let modified_ns = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(Meta {
        size: m.len(),
        modified_ns,
        etag: None,
    })
}

/// Open a file or object for reading; remote objects are read by ranges.
pub fn open(location: &str) -> std::io::Result<Box<dyn ReadSeek>> {
    if is_url(location) {
        #[cfg(feature = "cloud")]
        return Ok(Box::new(remote::RangeReader::open(location)?));
        #[cfg(not(feature = "cloud"))]
        return Err(unsupported(location));
    }
    Ok(Box::new(local::open_regular(location)?))
}

/// Read a whole file or object, refusing one over `max` bytes before
/// reading it: `Err(Ok(size))` when it is too large.
pub fn read_limited(location: &str, max: u64) -> std::io::Result<Result<Vec<u8>, u64>> {
    if is_url(location) {
        #[cfg(feature = "cloud")]
        return remote::read_limited(location, max);
        #[cfg(not(feature = "cloud"))]
        return Err(unsupported(location));
    }
    let f = local::open_regular(location)?;
    let size = f.metadata()?.len();
    if size > max {
        return Ok(Err(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // A file that grows while read is cut at the limit and refused.
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(Err(bytes.len() as u64));
    }
    Ok(Ok(bytes))
}

/// Every object under a URL prefix (recursively), sorted by name, with
/// their metadata. `prefix` is a folder: `s3://b/images` lists
/// `s3://b/images/...`.
pub fn list(prefix: &str) -> std::io::Result<Vec<(String, Meta)>> {
    #[cfg(feature = "cloud")]
    return remote::list(prefix);
    #[cfg(not(feature = "cloud"))]
    return Err(unsupported(prefix));
}

/// The objects a URL glob names, sorted. `*` and `?` do not cross `/`;
/// `**` matches any number of folders. Listing starts at the folder
/// before the first wildcard.
pub fn glob(pattern: &str) -> Result<Vec<String>, String> {
    let root = glob_root(pattern);
    let pat = glob::Pattern::new(pattern).map_err(|e| format!("invalid glob `{pattern}`: {e}"))?;
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let listed = list(&root).map_err(|e| format!("cannot list `{}`: {e}", redact(&root)))?;
    Ok(listed
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| pat.matches_with(name, opts))
        .collect())
}

/// The part of a path or glob before its first wildcard, cut back to a
/// folder: `s3://b/data/*.jsonl` -> `s3://b/data/`, `corpus/` -> `corpus/`,
/// `data/docs.jsonl` -> `data/`.
pub fn glob_root(pattern: &str) -> String {
    let first = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    let head = &pattern[..first];
    match head.rfind('/') {
        Some(i) => head[..=i].to_string(),
        None => String::new(),
    }
}

/// A remote dataset directory: the engine's view of an output URL.
#[cfg(feature = "cloud")]
pub use remote::{Created, RemoteDir};

/// A remote object read by ranges (what [`open`] returns for a URL), with
/// ranged access for readers that need it (Parquet).
#[cfg(feature = "cloud")]
pub use remote::RangeReader as RemoteFile;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("s3://b/k"));
        assert!(is_url("HTTPS://h/x.tar"));
        assert!(!is_url("data/docs.jsonl"));
        assert!(!is_url("/abs/a:b"));
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(
            check("ftp://h/x")
                .unwrap_err()
                .contains("unknown URL scheme")
        );
        assert!(check("s3:///k").unwrap_err().contains("no bucket"));
        let e = check("https://user:hunter2@h/x").unwrap_err();
        assert!(e.contains("user name") && !e.contains("hunter2"), "{e}");
        let e = check("https://h/x?X-Amz-Signature=abc").unwrap_err();
        assert!(e.contains("query") && !e.contains("abc"), "{e}");
        assert!(check("local/path").is_ok());
    }

    #[test]
    fn roots_parents_and_joins() {
        assert_eq!(glob_root("s3://b/data/*.jsonl"), "s3://b/data/");
        assert_eq!(glob_root("s3://b/data/**/x?.txt"), "s3://b/data/");
        assert_eq!(glob_root("data/docs.jsonl"), "data/");
        assert_eq!(glob_root("docs.jsonl"), "");
        assert_eq!(parent("s3://b/a/x.jsonl"), "s3://b/a");
        assert_eq!(parent("dir/x.jsonl"), "dir");
        assert_eq!(join("s3://b/a/", "x/y.png"), "s3://b/a/x/y.png");
        assert_eq!(join("s3://b/a", "x"), "s3://b/a/x");
        assert_eq!(join("s3://b/a/t", "../img/./x.png"), "s3://b/a/img/x.png");
        assert_eq!(join("s3://b/a", "../../x"), "s3://b/x");
        assert_eq!(redact("https://u:p@h:9/x?q=1"), "https://h:9/x");
    }
}
