//! The reader of metadata tables joined with the media files they name.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};

use super::MediaSpec;
use super::files::{check_local, read_limited};
use super::record::{MediaRecordBuilder, Record, reject};
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::{RejectSink, Rejection};
use crate::sources::{PERMISSION_DENIED, ReadOptions, SourceReader, denied};

/// A metadata table joined with the media files its `image_column` or
/// `audio_column` names:
/// the table is read by the table's own reader (which rejects bad rows),
/// then each row's file is read.
pub struct TableMediaReader {
    inner: Box<dyn SourceReader>,
    spec: MediaSpec,
    limits: Limits,
    batch_rows: usize,
    builder: MediaRecordBuilder,
    /// A table batch not yet fully read, and the next row of it.
    pending: Option<(RecordBatch, usize)>,
    captions_only: bool,
    /// The roots, resolved, that the named files must stay within: the
    /// first file's and the second's (`None` with `allow_outside_root`).
    confined: Option<(Option<PathBuf>, Option<PathBuf>)>,
}

/// A local root resolved (`None` for a URL or a root that does not exist:
/// its files are then checked by name, or are missing).
fn resolved(root: &str) -> Option<PathBuf> {
    match crate::storage::is_url(root) {
        true => None,
        false => std::fs::canonicalize(crate::storage::local::local_path(root)).ok(),
    }
}

/// Whether `full`, named by a row, stays within `root`: below it by name
/// (URLs) or once links and `..` are resolved (local files).
fn inside(
    root: &str,
    resolved_root: Option<&Path>,
    full: &str,
) -> std::result::Result<(), Rejection> {
    let outside = |shown: &str| {
        Err((
            "path_outside_root",
            format!(
                "resolves to `{shown}`, outside `{root}` (set allow_outside_root = true on the input to read it)"
            ),
        ))
    };
    if crate::storage::is_url(root) || crate::storage::is_url(full) {
        let prefix = format!("{}/", root.trim_end_matches('/'));
        return match full.starts_with(&prefix) {
            true => Ok(()),
            false => outside(full),
        };
    }
    // A root that does not exist (`None`): every file under it is missing.
    check_local(full, resolved_root)
}

impl TableMediaReader {
    pub fn new(inner: Box<dyn SourceReader>, spec: &MediaSpec, opts: &ReadOptions) -> Self {
        TableMediaReader {
            inner,
            spec: spec.clone(),
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder: MediaRecordBuilder::new(spec.media, opts),
            pending: None,
            captions_only: opts.captions_only,
            confined: (!spec.allow_outside_root).then(|| {
                (
                    resolved(&spec.root),
                    spec.also.as_ref().and_then(|a| resolved(&a.root)),
                )
            }),
        }
    }

    fn push_row(
        &mut self,
        batch: &RecordBatch,
        row: usize,
        rejects: &mut RejectSink,
    ) -> Result<()> {
        let string = |name: &str| {
            batch.column_by_name(name).and_then(|c| {
                let c = c.as_string::<i32>();
                (!c.is_null(row)).then(|| c.value(row))
            })
        };
        let id = string("sample_id").unwrap_or_default().to_string();
        let source = string("source").unwrap_or_default();
        let position = batch
            .column_by_name("position")
            .map(|c| c.as_primitive::<arrow::datatypes::UInt64Type>().value(row))
            .unwrap_or_default();
        let stage = self.spec.media.read_stage();
        let file = string(&self.spec.inner_path_column()).unwrap_or_default();
        let label = match self.spec.label_column.as_deref().and_then(string) {
            None => None,
            Some(name) => match self.spec.class_id(name) {
                Ok(l) => Some(l),
                Err(m) => {
                    return rejects.push(reject(stage, id, source, position, "unknown_label", m));
                }
            },
        };
        let text = self.spec.inner_caption_column().and_then(|c| string(&c));
        let (full_str, read) = self.read_named(&self.spec.root, file, false);
        let bytes = match read {
            Ok(b) => b,
            Err((kind, _)) if kind == PERMISSION_DENIED => return Err(denied(&full_str)),
            Err((kind, msg)) => {
                return rejects.push(reject(
                    stage,
                    id,
                    source,
                    position,
                    kind,
                    format!("{full_str}: {msg}"),
                ));
            }
        };
        // The second file of a multimodal row: both are read, or the row is
        // rejected with the reason of the one that failed.
        let mut also: Option<(String, Vec<u8>)> = None;
        if let Some(a) = &self.spec.also {
            let file = string(&a.column).unwrap_or_default();
            let (path, read) = match file.is_empty() && !self.captions_only {
                true => (
                    crate::storage::join(&a.root, file),
                    Err((
                        "missing_file",
                        format!("the row names no file in `{}`", a.column),
                    )),
                ),
                false => self.read_named(&a.root, file, true),
            };
            match read {
                // Stored as the row names it, whatever the root.
                Ok(b) => also = Some((file.to_string(), b)),
                Err((kind, _)) if kind == PERMISSION_DENIED => return Err(denied(&path)),
                Err((kind, msg)) => {
                    return rejects.push(reject(
                        a.media.read_stage(),
                        id,
                        source,
                        position,
                        kind,
                        format!("{path}: {msg}"),
                    ));
                }
            }
        }
        let extras: Vec<Option<&str>> = self.builder.extra_names().map(string).collect();
        self.builder.push(Record {
            sample_id: id,
            source,
            position,
            path: file,
            data: &bytes,
            label,
            text,
            also: also.as_ref().map(|(p, b)| (p.as_str(), b.as_slice())),
            extras: &extras,
        });
        Ok(())
    }
}

impl TableMediaReader {
    /// The file a row names, resolved against `root`, and its bytes (none
    /// when only captions are read).
    /// A file outside `root` (by `..`, an absolute path, a URL elsewhere
    /// or a link) is a `path_outside_root` reject unless the input allows
    /// it: a table's paths are data, possibly from strangers.
    fn read_named(
        &self,
        root: &str,
        file: &str,
        also: bool,
    ) -> (String, std::result::Result<Vec<u8>, Rejection>) {
        let full = match crate::storage::is_url(file) || Path::new(file).is_absolute() {
            true => file.to_string(),
            false => crate::storage::join(root, file),
        };
        if self.captions_only {
            return (full, Ok(Vec::new()));
        }
        if let Some((first, second)) = &self.confined {
            let resolved_root = if also { second } else { first };
            if let Err(r) = inside(root, resolved_root.as_deref(), &full) {
                return (full, Err(r));
            }
        }
        let read = read_limited(&full, self.limits.max_file_bytes);
        (full, read)
    }
}

impl SourceReader for TableMediaReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        loop {
            if self.pending.is_none() {
                match self.inner.next_batch(rejects)? {
                    Some(b) => self.pending = Some((b, 0)),
                    None => return self.builder.finish(),
                }
            }
            let (batch, mut row) = self.pending.take().expect("set above");
            while row < batch.num_rows() && !self.builder.is_full(self.batch_rows) {
                self.push_row(&batch, row, rejects)?;
                row += 1;
            }
            if row < batch.num_rows() {
                self.pending = Some((batch, row));
            }
            if self.builder.is_full(self.batch_rows) {
                return self.builder.finish();
            }
        }
    }
}
