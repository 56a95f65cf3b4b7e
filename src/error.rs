//! Errors that stop a run, named by who is at fault.
//!
//! A bad *record* is never an error: it becomes a reject (see
//! [`crate::rejects::Reject`]). These are for what a user must fix before the
//! run can go on: the pipeline file, the output directory, the machine.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file or the command line is wrong. Raised before any data
    /// is read; the message names the file, the key and the line.
    #[error("{0}")]
    Config(String),
    /// The output directory cannot be used as asked (another run holds it,
    /// it was built from a different plan, ...).
    #[error("{0}")]
    Output(String),
    /// An I/O failure on something kiln must write or a file it must have.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something failed while processing data that is not the data's fault.
    #[error("{0}")]
    Execution(String),
    /// A broken invariant inside kiln: a bug, never the user's doing.
    #[error("internal error (a bug in kiln; please report it): {0}")]
    Internal(String),
}

impl Error {
    /// Whether trying again may succeed: an I/O failure (a disk, the
    /// network, an object store), not a wrong pipeline or output. Faults
    /// that a retry meets again until someone fixes them are not: refused
    /// permissions or credentials, a full disk or quota, a read-only
    /// filesystem, an output folder gone.
    pub fn retriable(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(self, Error::Io { source, .. }
            if !matches!(source.kind(), PermissionDenied | StorageFull | QuotaExceeded | ReadOnlyFilesystem | NotFound))
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn io_path(action: &str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::io(format!("{action} {}", path.display()), source)
    }

    /// An I/O error of a format writer, said of the file it was writing.
    pub fn in_file(self, action: &str, path: &std::path::Path) -> Self {
        match self {
            Error::Io { source, .. } => Error::io_path(action, path, source),
            e => e,
        }
    }
}

/// Run `f`, a call into a format library that may panic on a malformed
/// file (Arrow IPC and Parquet readers do, on some schemas): the panic's
/// message as an error, so that one bad file is a reject or a clear error,
/// not a crash.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        match e {
            // A disk's fault stays an I/O error: its kind decides the exit
            // code, and the writer names the file (`in_file`).
            arrow::error::ArrowError::IoError(context, source) => Error::io(context, source),
            e => Error::Execution(format!("arrow: {e}")),
        }
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        match e {
            parquet::errors::ParquetError::External(inner) => {
                match inner.downcast::<std::io::Error>() {
                    Ok(io) => Error::io("parquet", *io),
                    Err(other) => Error::Execution(format!("parquet: {other}")),
                }
            }
            e => Error::Execution(format!("parquet: {e}")),
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Execution(format!("datafusion: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Execution(format!("json: {e}"))
    }
}

/// Convenience for attaching a path to an I/O result.
pub trait IoContext<T> {
    fn at(self, action: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io_path(action, &path.into(), e))
    }
}
