//! The reader of whole media files, labelled by their parent folder.

use arrow::array::RecordBatch;

use super::MediaSpec;
use std::path::PathBuf;

use super::files::{check_entry, folder_label, read_limited};
use super::record::{MediaRecordBuilder, Record, reject};
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::RejectSink;
use crate::sources::input::LabelSource;
use crate::sources::{PERMISSION_DENIED, ReadOptions, SourceReader, Split, denied, sample_id};
use crate::storage::local::local_path;

/// Media files: the whole-file splits of an `images` or `audio` input that
/// follow one another in a task, read into batches of many samples (so that
/// stages batch, and mixing finds partners, across files).
pub struct MediaFileReader {
    /// (location, name in ids) of each file.
    paths: std::vec::IntoIter<(String, String)>,
    spec: MediaSpec,
    limits: Limits,
    batch_rows: usize,
    builder: MediaRecordBuilder,
    captions_only: bool,
    /// The input's folder, resolved, that files must stay within (`None`:
    /// anywhere).
    root: Option<PathBuf>,
}

impl MediaFileReader {
    pub fn new(splits: &[Split], spec: &MediaSpec, opts: &ReadOptions) -> Self {
        MediaFileReader {
            paths: splits
                .iter()
                .map(|s| (s.path.clone(), s.name.clone()))
                .collect::<Vec<_>>()
                .into_iter(),
            spec: spec.clone(),
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder: MediaRecordBuilder::new(spec.media, opts),
            captions_only: opts.captions_only,
            root: (!spec.allow_outside_root && !crate::storage::is_url(&spec.root))
                .then(|| {
                    let root = if spec.root.is_empty() {
                        "."
                    } else {
                        &spec.root
                    };
                    std::fs::canonicalize(local_path(root)).ok()
                })
                .flatten(),
        }
    }

    fn read(&mut self, path: &str, name: &str, rejects: &mut RejectSink) -> Result<()> {
        let id = sample_id(name, 0);
        let stage = self.spec.media.read_stage();
        let fail = |kind: &str, msg: String| reject(stage, id.clone(), name, 0, kind, msg);
        if let Err((kind, msg)) = check_entry(path, self.spec.media, self.root.as_deref()) {
            if kind == PERMISSION_DENIED {
                return Err(denied(path));
            }
            return rejects.push(fail(kind, msg));
        }
        let label = match self.spec.labels {
            LabelSource::None => None,
            LabelSource::Folder => {
                let name = folder_label(path).unwrap_or_default();
                match self.spec.class_id(&name) {
                    Ok(l) => Some(l),
                    Err(m) => return rejects.push(fail("unknown_label", m)),
                }
            }
        };
        match read_limited(path, self.limits.max_file_bytes) {
            Ok(bytes) => self.builder.push(Record {
                sample_id: id.clone(),
                source: name,
                position: 0,
                path: name,
                data: &bytes,
                label,
                text: None,
                also: None,
                extras: &[],
            }),
            Err((kind, _)) if kind == PERMISSION_DENIED => return Err(denied(path)),
            Err((kind, msg)) => rejects.push(fail(kind, msg))?,
        }
        Ok(())
    }
}

impl SourceReader for MediaFileReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        if self.captions_only {
            // Media files carry no captions.
            return Ok(None);
        }
        while !self.builder.is_full(self.batch_rows) {
            let Some((path, name)) = self.paths.next() else {
                break;
            };
            self.read(&path, &name, rejects)?;
        }
        self.builder.finish()
    }
}
