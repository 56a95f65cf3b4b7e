//! The reader of WebDataset-style tar shards.

use std::io::Read;

use arrow::array::RecordBatch;

use super::files::file_too_large;
use super::record::{MediaRecordBuilder, Record, reject};
use super::{Media, MediaSpec};
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::{RejectSink, Rejection};
use crate::sources::{ReadOptions, SourceReader, Split};

/// A WebDataset-style tar shard: consecutive members sharing a key (the
/// member name up to the first dot of its file name) are one sample. The
/// image or audio is the member with an extension of the input's media
/// (`.jpg`, `.flac`...); `.txt` is the caption or transcript,
/// `.cls` the class id, `.json` an object whose fields fill the input's
/// extra columns.
pub struct TarReader {
    path: String,
    /// The shard's name in ids (see [`Split::name`]).
    name: String,
    spec: MediaSpec,
    limits: Limits,
    batch_rows: usize,
    builder: MediaRecordBuilder,
    /// Offset of the next member header.
    offset: u64,
    /// Keys already emitted: a key must not come back.
    keys: std::collections::HashSet<String>,
    /// The sample being gathered: its key, offset and members.
    pending: Option<TarSample>,
    done: bool,
    captions_only: bool,
}

/// A member's bytes, or why they were not read: `(kind, message)`.
type MemberBytes = std::result::Result<Vec<u8>, Rejection>;

#[derive(Default)]
struct TarSample {
    key: String,
    position: u64,
    /// `(extension, bytes or why they were not read)`.
    members: Vec<(String, MemberBytes)>,
}

fn tar_key(name: &str) -> (String, String) {
    let (dir, file) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    match file.find('.') {
        Some(i) => (
            format!("{dir}{}", &file[..i]),
            file[i + 1..].to_ascii_lowercase(),
        ),
        None => (name.to_string(), String::new()),
    }
}

impl TarReader {
    pub fn new(split: &Split, spec: &MediaSpec, opts: &ReadOptions) -> Self {
        TarReader {
            path: split.path.clone(),
            name: split.name.clone(),
            spec: spec.clone(),
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder: MediaRecordBuilder::new(spec.media, opts),
            offset: 0,
            keys: Default::default(),
            pending: None,
            done: false,
            captions_only: opts.captions_only,
        }
    }

    fn sample_id(&self, key: &str) -> String {
        format!("{}:{key}", self.name)
    }

    /// Turn a gathered sample into a record or a reject.
    fn emit(&mut self, s: TarSample, rejects: &mut RejectSink) -> Result<()> {
        if !self.keys.insert(s.key.clone()) {
            // Its members are not together: a second sample of the same key.
            return rejects.push(reject(
                "read_tar",
                format!("{}:{}@{}", self.name, s.key, s.position),
                &self.name,
                s.position,
                "duplicate_key",
                format!(
                    "key `{}` appears again at byte {}, after other keys",
                    s.key, s.position
                ),
            ));
        }
        let id = self.sample_id(&s.key);
        let fail = |kind: &str, msg: String| {
            reject("read_tar", id.clone(), &self.name, s.position, kind, msg)
        };
        let media = self.spec.media;
        let mut file: Option<(&str, &[u8])> = None;
        let mut text = None;
        let mut label = None;
        let mut json: Option<serde_json::Map<String, serde_json::Value>> = None;
        for (ext, data) in &s.members {
            let data = match data {
                Ok(d) => d,
                Err((kind, msg)) => {
                    return rejects.push(fail(kind, format!("member .{ext}: {msg}")));
                }
            };
            match ext.as_str() {
                e if media.has_extension(e) && file.is_none() => file = Some((e, data)),
                "txt" => match std::str::from_utf8(data) {
                    Ok(t) => text = Some(t.trim_end_matches(['\n', '\r'])),
                    Err(_) => {
                        return rejects
                            .push(fail("invalid_utf8", "member .txt is not UTF-8".into()));
                    }
                },
                "cls" => {
                    let t = String::from_utf8_lossy(data);
                    match self.spec.class_id(t.trim()) {
                        Ok(l) => label = Some(l),
                        Err(m) => {
                            return rejects
                                .push(fail("unknown_label", format!("member .cls: {m}")));
                        }
                    }
                }
                "json" => match serde_json::from_slice(data) {
                    Ok(serde_json::Value::Object(m)) => json = Some(m),
                    _ => {
                        return rejects.push(fail(
                            "invalid_json",
                            "member .json is not a JSON object".into(),
                        ));
                    }
                },
                _ => {}
            }
        }
        let Some((ext, bytes)) = file else {
            return rejects.push(fail(
                &format!("no_{}", media.name()),
                format!(
                    "key `{}` has no {} member ({})",
                    s.key,
                    media.name(),
                    media.extensions().join(", ")
                ),
            ));
        };
        let extra_values: Vec<Option<String>> = self
            .builder
            .extra_names()
            .map(|name| {
                json.as_ref().and_then(|m| m.get(name)).map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            })
            .collect();
        let extras: Vec<Option<&str>> = extra_values.iter().map(Option::as_deref).collect();
        let member = format!("{}/{}.{ext}", self.name, s.key);
        self.builder.push(Record {
            sample_id: id.clone(),
            source: &self.name,
            position: s.position,
            path: &member,
            data: bytes,
            label,
            text,
            also: None,
            extras: &extras,
        });
        Ok(())
    }
}

impl TarReader {
    /// Whether a member of `sample` with extension `ext` is worth reading:
    /// the first image or audio file, `.txt`, `.cls`, `.json`; others are
    /// skipped unread.
    fn wanted(media: Media, sample: Option<&TarSample>, ext: &str) -> bool {
        let seen =
            |f: &dyn Fn(&str) -> bool| sample.is_some_and(|s| s.members.iter().any(|(e, _)| f(e)));
        if media.has_extension(ext) {
            return !seen(&|e: &str| media.has_extension(e));
        }
        matches!(ext, "txt" | "cls" | "json") && !seen(&|e: &str| e == ext)
    }

    /// Read members of the shard (`file`, opened once a batch) from the
    /// saved offset until the batch is full or the shard ends; finished
    /// samples go to the builder or to rejects.
    fn fill(
        &mut self,
        mut file: Box<dyn crate::storage::ReadSeek>,
        rejects: &mut RejectSink,
    ) -> Result<Option<String>> {
        use std::io::{Seek, SeekFrom};
        let base = self.offset;
        file.seek(SeekFrom::Start(base))
            .map_err(|e| crate::error::Error::io(format!("seek {}", self.path), e))?;
        let max = self.limits.max_file_bytes;
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => return Ok(Some(e.to_string())),
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => return Ok(Some(e.to_string())),
            };
            let size = entry.size();
            let next = base + entry.raw_file_position() + size.div_ceil(512) * 512;
            if !entry.header().entry_type().is_file() {
                self.offset = next;
                continue;
            }
            // Names that are not UTF-8 are kept, escaped (`storage::local`):
            // two members never share a key by losing their bytes.
            let name = crate::storage::local::bytes_string(&entry.path_bytes());
            let (key, ext) = tar_key(&name);
            let position = base + entry.raw_header_position();
            if self.pending.as_ref().is_some_and(|p| p.key != key) {
                let done = self.pending.take().expect("checked");
                self.emit(done, rejects)?;
            }
            let sample = self.pending.as_ref().filter(|p| p.key == key);
            if Self::wanted(self.spec.media, sample, &ext) {
                let data = if self.captions_only && self.spec.media.has_extension(&ext) {
                    Ok(Vec::new())
                } else if size > max {
                    Err(file_too_large(size, max))
                } else {
                    let mut buf = Vec::with_capacity(size as usize);
                    if let Err(e) = entry.read_to_end(&mut buf) {
                        return Ok(Some(format!("cannot read member {name}: {e}")));
                    }
                    Ok(buf)
                };
                match &mut self.pending {
                    Some(p) => p.members.push((ext, data)),
                    None => {
                        self.pending = Some(TarSample {
                            key,
                            position,
                            members: vec![(ext, data)],
                        })
                    }
                }
            } else if self.pending.is_none() {
                self.pending = Some(TarSample {
                    key,
                    position,
                    members: Vec::new(),
                });
            }
            self.offset = next;
            if self.builder.is_full(self.batch_rows) {
                return Ok(None);
            }
        }
        self.done = true;
        Ok(None)
    }
}

impl SourceReader for TarReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        // A call may finish no sample (one large sample, or all rejected):
        // read on until a batch has rows or the shard ends.
        while !self.done {
            let failure = match crate::storage::open(&self.path) {
                Ok(file) => self.fill(file, rejects)?,
                Err(e) => {
                    self.done = true;
                    crate::sources::check_denied(&self.path, &e)?;
                    rejects.push(reject(
                        "read_tar",
                        format!("{}:*", self.name),
                        &self.name,
                        0,
                        "unreadable_file",
                        format!("cannot open: {e}"),
                    ))?;
                    return Ok(None);
                }
            };
            if failure.is_some() {
                self.done = true;
            }
            if self.done {
                if let Some(last) = self.pending.take() {
                    self.emit(last, rejects)?;
                }
                return finish_with(self, failure, rejects);
            }
            if let Some(batch) = self.builder.finish()? {
                return Ok(Some(batch));
            }
        }
        Ok(None)
    }
}

/// The last batch of a tar, and one reject for the unreadable rest of it.
fn finish_with(
    r: &mut TarReader,
    failure: Option<String>,
    rejects: &mut RejectSink,
) -> Result<Option<RecordBatch>> {
    if let Some(msg) = failure {
        rejects.push(reject(
            "read_tar",
            format!("{}:*", r.path),
            &r.path,
            0,
            "bad_tar",
            format!("the archive is damaged; its remaining members are not read: {msg}"),
        ))?;
    }
    r.builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(
            tar_key("a/b.c/x1.seg.jpg"),
            ("a/b.c/x1".into(), "seg.jpg".into())
        );
        assert_eq!(tar_key("k.CLS"), ("k".into(), "cls".into()));
    }
}
