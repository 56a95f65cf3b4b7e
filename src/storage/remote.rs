//! Object stores through `object_store`, driven from synchronous code on
//! one small Tokio runtime.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

use super::{Meta, StorageConfig, redact, settings};

/// Bytes fetched per ranged request, and the part size of uploads.
const CHUNK: u64 = 8 << 20;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kiln-storage")
        .enable_all()
        .build()
        .expect("a Tokio runtime starts")
});

fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.block_on(f)
}

type Store = Arc<dyn ObjectStore>;

static STORES: LazyLock<Mutex<HashMap<String, Store>>> = LazyLock::new(Default::default);

/// A URL cut into its store (`s3://bucket`) and the object's key.
struct Url {
    scheme: String,
    authority: String,
    key: String,
}

impl Url {
    fn parse(location: &str) -> std::io::Result<Url> {
        super::check(location).map_err(std::io::Error::other)?;
        let (scheme, rest) = location.split_once("://").expect("checked: a URL");
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(Url {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_string(),
            key: key.trim_matches('/').to_string(),
        })
    }

    fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    fn path(&self) -> std::io::Result<ObjPath> {
        ObjPath::parse(&self.key).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("`{}` is not a valid object key: {e}", self.key),
            )
        })
    }

    fn store(&self) -> std::io::Result<Store> {
        let base = self.base();
        let mut stores = STORES.lock().expect("not poisoned");
        if let Some(s) = stores.get(&base) {
            return Ok(s.clone());
        }
        let store = build(&self.scheme, &base, &settings()).map_err(|e| {
            std::io::Error::other(format!("cannot open the store `{}`: {e}", redact(&base)))
        })?;
        stores.insert(base, store.clone());
        Ok(store)
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
}

fn build(scheme: &str, base: &str, cfg: &StorageConfig) -> Result<Store, String> {
    let timeout = Duration::from_secs(cfg.timeout_s.unwrap_or(30).max(1));
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: cfg.retries.unwrap_or(10),
        retry_timeout: Duration::from_secs(180),
    };
    let options = ClientOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(Duration::from_secs(10));
    let err = |e: object_store::Error| e.to_string();
    match scheme {
        "s3" | "s3a" => {
            use object_store::aws::AmazonS3Builder;
            let endpoint = cfg.endpoint.clone().or_else(|| {
                std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok()
            });
            let allow_http = cfg.allow_http.unwrap_or(env_flag("AWS_ALLOW_HTTP"));
            if let Some(e) = &endpoint
                && e.starts_with("http://")
                && !allow_http
            {
                return Err(format!(
                    "the endpoint {e} is plain HTTP; set allow_http = true in [storage] (or AWS_ALLOW_HTTP=true) to use it"
                ));
            }
            let mut b = AmazonS3Builder::from_env()
                .with_url(base)
                .with_client_options(options)
                .with_retry(retry)
                .with_allow_http(allow_http);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(r) = &cfg.region {
                b = b.with_region(r);
            }
            Ok(Arc::new(b.build().map_err(err)?))
        }
        "gs" => {
            use object_store::gcp::GoogleCloudStorageBuilder;
            let b = GoogleCloudStorageBuilder::from_env()
                .with_url(base)
                .with_client_options(options)
                .with_retry(retry);
            Ok(Arc::new(b.build().map_err(err)?))
        }
        "az" | "abfs" | "abfss" | "azure" | "adl" => {
            use object_store::azure::MicrosoftAzureBuilder;
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(base)
                .with_client_options(options)
                .with_retry(retry);
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Some(a) = cfg.allow_http {
                b = b.with_allow_http(a);
            }
            Ok(Arc::new(b.build().map_err(err)?))
        }
        "http" | "https" => {
            use object_store::http::HttpBuilder;
            let b = HttpBuilder::new()
                .with_url(base)
                .with_client_options(options.with_allow_http(scheme == "http"))
                .with_retry(retry);
            Ok(Arc::new(b.build().map_err(err)?))
        }
        other => Err(format!("unknown URL scheme `{other}://`")),
    }
}

/// An `object_store` error as an I/O error: not found stays not found;
/// the message names the object, never a credential.
fn io_err(e: object_store::Error) -> std::io::Error {
    use std::io::ErrorKind;
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        _ => ErrorKind::Other,
    };
    let message = e.to_string();
    if message.contains("169.254.169.254") {
        // object_store fell back to the instance metadata service.
        return std::io::Error::new(
            kind,
            format!(
                "no credentials: none in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE...) and the instance metadata service did not give any ({message})"
            ),
        );
    }
    std::io::Error::new(kind, message)
}

/// Run a write again when it failed in transit. `object_store` retries
/// what is safe to repeat; a conditional or non-idempotent request that
/// lost its connection comes back as a `Generic` error instead. kiln's
/// writes are safe to repeat (a create-only write that did happen is then
/// told apart by reading it back), so they are retried here: 6 tries,
/// 0.2 s to 3.2 s apart.
fn retrying<T, F: Future<Output = object_store::Result<T>>>(
    mut op: impl FnMut() -> F,
) -> object_store::Result<T> {
    let mut wait = Duration::from_millis(200);
    for _ in 0..5 {
        match block_on(op()) {
            Err(e @ object_store::Error::Generic { .. }) => {
                tracing::debug!(error = %e, "retrying a store write");
                std::thread::sleep(wait);
                wait *= 2;
            }
            other => return other,
        }
    }
    block_on(op())
}

fn meta(m: &object_store::ObjectMeta) -> Meta {
    Meta {
        size: m.size,
        modified_ns: m
            .last_modified
            .timestamp_nanos_opt()
            .map_or(0, |n| n.max(0) as u128),
        etag: m.e_tag.clone(),
    }
}

/// What the last listings said of each object: planning a folder of a
/// million files asks the store once per page, not once per file.
static LISTED: LazyLock<Mutex<HashMap<String, Meta>>> = LazyLock::new(Default::default);

pub fn stat(location: &str) -> std::io::Result<Meta> {
    if let Some(m) = LISTED.lock().expect("not poisoned").get(location) {
        return Ok(m.clone());
    }
    let url = Url::parse(location)?;
    let store = url.store()?;
    let path = url.path()?;
    block_on(store.head(&path))
        .map(|m| meta(&m))
        .map_err(io_err)
}

pub fn read_limited(location: &str, max: u64) -> std::io::Result<Result<Vec<u8>, u64>> {
    let url = Url::parse(location)?;
    let store = url.store()?;
    let path = url.path()?;
    // One request: the answer's headers give the size before the body is
    // read, and a body over the limit is not read at all.
    block_on(async {
        let got = store.get(&path).await?;
        if got.meta.size > max {
            return Ok(Err(got.meta.size));
        }
        let bytes = got.bytes().await?;
        Ok(match bytes.len() as u64 > max {
            true => Err(bytes.len() as u64),
            false => Ok(bytes.to_vec()),
        })
    })
    .map_err(io_err)
}

pub fn list(prefix: &str) -> std::io::Result<Vec<(String, Meta)>> {
    let url = Url::parse(prefix)?;
    if matches!(url.scheme.as_str(), "http" | "https") {
        return Err(std::io::Error::other(format!(
            "`{}`: an HTTP server cannot list; name each file",
            redact(prefix)
        )));
    }
    let store = url.store()?;
    let path = url.path()?;
    let listed: Vec<object_store::ObjectMeta> = block_on(
        store
            .list((!url.key.is_empty()).then_some(&path))
            .try_collect(),
    )
    .map_err(io_err)?;
    let base = url.base();
    let mut out: Vec<(String, Meta)> = listed
        .iter()
        .map(|m| (format!("{base}/{}", m.location), meta(m)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    LISTED
        .lock()
        .expect("not poisoned")
        .extend(out.iter().cloned());
    Ok(out)
}

/// A remote object read by ranges of [`CHUNK`] bytes, with `Seek`.
#[derive(Clone)]
pub struct RangeReader {
    store: Store,
    path: ObjPath,
    size: u64,
    pos: u64,
    buf: Bytes,
    buf_start: u64,
}

impl RangeReader {
    pub fn open(location: &str) -> std::io::Result<RangeReader> {
        let url = Url::parse(location)?;
        let store = url.store()?;
        let path = url.path()?;
        let size = block_on(store.head(&path)).map_err(io_err)?.size;
        Ok(RangeReader {
            store,
            path,
            size,
            pos: 0,
            buf: Bytes::new(),
            buf_start: 0,
        })
    }

    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// `len` bytes from `start` (fewer at the end of the object).
    pub fn range(&self, start: u64, len: u64) -> std::io::Result<Bytes> {
        let end = start.saturating_add(len).min(self.size);
        if start >= end {
            return Ok(Bytes::new());
        }
        block_on(self.store.get_range(&self.path, start..end)).map_err(io_err)
    }
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let in_buf =
            self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
        if !in_buf {
            self.buf = self.range(self.pos, CHUNK)?;
            self.buf_start = self.pos;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let at = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// What a create-only write found.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// Written now (or by an earlier try of this write whose answer was lost).
    Written,
    /// Another writer got there first, with these bytes.
    Exists(Vec<u8>),
}

/// A dataset directory in an object store: names are relative to it.
#[derive(Clone)]
pub struct RemoteDir {
    store: Store,
    base: String,
    prefix: String,
}

impl std::fmt::Debug for RemoteDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteDir({})", self.url(""))
    }
}

impl RemoteDir {
    pub fn open(location: &str) -> std::io::Result<RemoteDir> {
        let url = Url::parse(location)?;
        if matches!(url.scheme.as_str(), "http" | "https") {
            return Err(std::io::Error::other(format!(
                "`{}`: kiln cannot write to an HTTP server; write to s3://, gs:// or az://",
                redact(location)
            )));
        }
        Ok(RemoteDir {
            store: url.store()?,
            base: url.base(),
            prefix: url.key,
        })
    }

    fn path(&self, name: &str) -> std::io::Result<ObjPath> {
        let key = match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => name.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{name}", self.prefix),
        };
        ObjPath::parse(&key).map_err(|e| std::io::Error::other(format!("bad key `{key}`: {e}")))
    }

    /// The URL of `name` in this directory.
    pub fn url(&self, name: &str) -> String {
        let mut u = format!("{}/{}", self.base, self.prefix);
        if !name.is_empty() {
            if !u.ends_with('/') {
                u.push('/');
            }
            u.push_str(name);
        }
        u
    }

    pub fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        let path = self.path(name)?;
        match block_on(async { self.store.get(&path).await?.bytes().await }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    pub fn exists(&self, name: &str) -> std::io::Result<bool> {
        let path = self.path(name)?;
        match block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Write (or overwrite) `name`.
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> std::io::Result<()> {
        let path = self.path(name)?;
        let payload = PutPayload::from(bytes);
        retrying(|| self.store.put(&path, payload.clone()))
            .map(|_| ())
            .map_err(io_err)
    }

    /// Write `name` only if nothing is there. A write whose answer was lost
    /// and that then finds the object is told apart by reading it back:
    /// the same bytes count as written.
    pub fn put_create(&self, name: &str, bytes: Vec<u8>) -> std::io::Result<Created> {
        let path = self.path(name)?;
        let payload = PutPayload::from(bytes.clone());
        let put = || {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            self.store.put_opts(&path, payload.clone(), opts)
        };
        match retrying(put) {
            Ok(_) => Ok(Created::Written),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                match self.get(name)? {
                    Some(there) if there == bytes => Ok(Created::Written),
                    Some(there) => Ok(Created::Exists(there)),
                    // Deleted since: try once more.
                    None => self.put_create(name, bytes),
                }
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Upload a local file as `name`: one request when small, else a
    /// multipart upload read from the file part by part.
    pub fn upload(&self, name: &str, file: &std::path::Path) -> std::io::Result<()> {
        let path = self.path(name)?;
        let size = std::fs::metadata(file)?.len();
        if size <= CHUNK {
            return self.put(name, std::fs::read(file)?);
        }
        let mut tries = 0;
        loop {
            match self.upload_parts(&path, file) {
                Err(e) if tries < 5 && e.kind() == std::io::ErrorKind::Other => {
                    // A part or the completion lost in transit: start over.
                    tries += 1;
                    tracing::debug!(error = %e, "retrying a multipart upload");
                    std::thread::sleep(Duration::from_millis(200 << tries));
                }
                other => return other,
            }
        }
    }

    fn upload_parts(&self, path: &ObjPath, file: &std::path::Path) -> std::io::Result<()> {
        let mut f = std::fs::File::open(file)?;
        block_on(async {
            let upload = self.store.put_multipart(path).await.map_err(io_err)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, CHUNK as usize);
            let mut buf = vec![0u8; CHUNK as usize];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(2).await.map_err(io_err)?;
                w.write(&buf[..n]);
            }
            w.finish().await.map(|_| ()).map_err(io_err)
        })
    }

    /// Download `name` into a local file.
    pub fn download(&self, name: &str, to: &std::path::Path) -> std::io::Result<bool> {
        let path = self.path(name)?;
        let got = block_on(async {
            let mut stream = self.store.get(&path).await?.into_stream();
            let mut f = std::fs::File::create(to).map_err(|e| object_store::Error::Generic {
                store: "local",
                source: Box::new(e),
            })?;
            while let Some(chunk) = stream.try_next().await? {
                std::io::Write::write_all(&mut f, &chunk).map_err(|e| {
                    object_store::Error::Generic {
                        store: "local",
                        source: Box::new(e),
                    }
                })?;
            }
            Ok::<_, object_store::Error>(())
        });
        match got {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Server-side copy (overwrites).
    pub fn copy(&self, from: &str, to: &str) -> std::io::Result<()> {
        let (from, to) = (self.path(from)?, self.path(to)?);
        retrying(|| self.store.copy(&from, &to)).map_err(io_err)
    }

    /// Delete `name`; a missing object is not an error.
    pub fn delete(&self, name: &str) -> std::io::Result<()> {
        let path = self.path(name)?;
        match retrying(|| self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Names under `folder` (relative to this directory), sorted.
    pub fn list(&self, folder: &str) -> std::io::Result<Vec<String>> {
        let path = self.path(folder)?;
        let listed: Vec<object_store::ObjectMeta> = block_on(
            self.store
                .list((!path.as_ref().is_empty()).then_some(&path))
                .try_collect(),
        )
        .map_err(io_err)?;
        let cut = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut names: Vec<String> = listed
            .iter()
            .map(|m| {
                m.location
                    .as_ref()
                    .get(cut..)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Delete everything under `folder`.
    pub fn delete_all(&self, folder: &str) -> std::io::Result<()> {
        for name in self.list(folder)? {
            self.delete(&name)?;
        }
        Ok(())
    }

    /// Whether the store honours create-only writes: a second create of
    /// one probe object must fail. A store that ignores the condition
    /// cannot arbitrate between parallel writers.
    pub fn probe_create_only(&self, nonce: &str) -> std::io::Result<bool> {
        let name = format!(".kiln/probe-{nonce}");
        let first = self.put_create(&name, b"1".to_vec())?;
        let second = self.put_create(&name, b"2".to_vec())?;
        self.delete(&name)?;
        Ok(first == Created::Written && matches!(second, Created::Exists(_)))
    }
}
