//! Rejected samples: what was rejected, where it came from, which stage
//! refused it and why. Streamed to an Arrow IPC file per task, merged into the
//! dataset's `rejects.arrow` at commit.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::array::{RecordBatch, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;

use crate::error::{IoContext, Result};

/// Why a record is rejected: a short kind (`invalid_utf8`, `truncated`...)
/// and a message.
pub type Rejection = (&'static str, String);

/// One rejected sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub sample_id: String,
    pub source: Option<String>,
    /// Byte offset of the line, or row number in a table.
    pub position: Option<u64>,
    pub stage: String,
    /// A short machine-readable reason: `invalid_utf8`, `line_too_long`, ...
    pub kind: String,
    pub message: String,
}

pub static REJECTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("position", DataType::UInt64, true),
        Field::new("stage", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
    ]))
});

const FLUSH_ROWS: usize = 1024;

/// Collects rejects, counts them by `stage/kind`, and streams them to a file
/// so that a flood of bad records never piles up in memory.
pub struct RejectSink {
    path: PathBuf,
    pending: Vec<Reject>,
    writer: Option<StreamWriter<BufWriter<File>>>,
    pub counts: BTreeMap<String, u64>,
    pub total: u64,
}

impl RejectSink {
    pub fn new(path: PathBuf) -> Self {
        RejectSink {
            path,
            pending: Vec::new(),
            writer: None,
            counts: BTreeMap::new(),
            total: 0,
        }
    }

    /// A sink that only counts (used when reading for tokenizer training).
    pub fn discard() -> Self {
        Self::new(PathBuf::new())
    }

    pub fn push(&mut self, reject: Reject) -> Result<()> {
        self.push_counted(reject, 1)
    }

    /// One row standing for `samples` rejected samples (a range of rows too
    /// long to list one by one); counted as `samples`.
    pub fn push_counted(&mut self, reject: Reject, samples: u64) -> Result<()> {
        *self
            .counts
            .entry(format!("{}/{}", reject.stage, reject.kind))
            .or_default() += samples;
        self.total += samples;
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        tracing::debug!(sample = %reject.sample_id, stage = %reject.stage, kind = %reject.kind, "rejected: {}", reject.message);
        self.pending.push(reject);
        if self.pending.len() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.writer.is_none() {
            let file = File::create(&self.path).at("create", &self.path)?;
            self.writer = Some(StreamWriter::try_new(
                BufWriter::new(file),
                &REJECTS_SCHEMA,
            )?);
        }
        let batch = to_batch(&self.pending)?;
        self.pending.clear();
        self.writer.as_mut().expect("opened above").write(&batch)?;
        Ok(())
    }

    /// Flush and close; returns whether a file was written.
    pub fn finish(mut self) -> Result<bool> {
        self.flush()?;
        match self.writer.take() {
            Some(mut w) => {
                w.finish()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

pub fn to_batch(rejects: &[Reject]) -> Result<RecordBatch> {
    let mut id = StringBuilder::new();
    let mut source = StringBuilder::new();
    let mut position = UInt64Builder::new();
    let mut stage = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut message = StringBuilder::new();
    for r in rejects {
        id.append_value(&r.sample_id);
        source.append_option(r.source.as_deref());
        position.append_option(r.position);
        stage.append_value(&r.stage);
        kind.append_value(&r.kind);
        message.append_value(&r.message);
    }
    Ok(RecordBatch::try_new(
        REJECTS_SCHEMA.clone(),
        vec![
            Arc::new(id.finish()),
            Arc::new(source.finish()),
            Arc::new(position.finish()),
            Arc::new(stage.finish()),
            Arc::new(kind.finish()),
            Arc::new(message.finish()),
        ],
    )?)
}

/// Concatenate per-task reject files into one stream file, in task order.
/// Returns the number of rows written.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<u64> {
    let file = File::create(out).at("create", out)?;
    let mut writer = StreamWriter::try_new(BufWriter::new(file), &REJECTS_SCHEMA)?;
    let mut rows = 0u64;
    for input in inputs {
        let f = File::open(input).at("open", input)?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::BufReader::new(f), None)?;
        for batch in reader {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            writer.write(&batch)?;
        }
    }
    writer.finish()?;
    Ok(rows)
}
