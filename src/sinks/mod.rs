//! Shard writers: a task's output rows become one or more shard files, each
//! closed when it reaches the byte or row cap, written under a temporary name
//! and renamed when complete, with its size and SHA-256 taken as it is
//! written.

mod arrow_shards;
mod parquet;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use crate::dataset::{OutputFormat, sha256_hex};
use crate::error::{IoContext, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    None,
    #[default]
    Snappy,
    Zstd,
    Lz4,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The dataset directory.
    pub path: String,
    #[serde(default)]
    pub format: OutputFormat,
    /// A shard is closed once it holds this many bytes.
    #[serde(default = "default_max_shard_bytes")]
    pub max_shard_bytes: u64,
    /// A shard never holds more rows than this.
    #[serde(default = "default_max_shard_rows")]
    pub max_shard_rows: u64,
    #[serde(default)]
    pub parquet_compression: ParquetCompression,
}

fn default_max_shard_bytes() -> u64 {
    500_000_000
}

fn default_max_shard_rows() -> u64 {
    1_000_000
}

/// A finished shard of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// File name inside the task's directory.
    pub file: String,
    pub rows: u64,
    /// Documents whose first window is in this shard.
    pub documents: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Counts bytes and hashes them (SHA-256) on the way to the file.
///
/// ring's SHA-256 (BoringSSL's assembly, with AVX2 or the SHA extensions
/// where the CPU has them) is about three times the portable one's speed
/// here, and a shard of spectrograms is hundreds of megabytes.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(mut self) -> std::io::Result<(W, u64, String)> {
        self.inner.flush()?;
        Ok((self.inner, self.bytes, hex::encode(self.hasher.finish())))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub type ShardFile = HashingWriter<BufWriter<File>>;

/// One open shard in some format.
trait FormatWriter: Send {
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Bytes written so far, counting what the format still buffers.
    fn bytes(&self) -> u64;
    fn finish(self: Box<Self>) -> Result<ShardFile>;
}

fn open_format(
    format: OutputFormat,
    compression: ParquetCompression,
    file: ShardFile,
    schema: &SchemaRef,
) -> Result<Box<dyn FormatWriter>> {
    Ok(match format {
        OutputFormat::Arrow => Box::new(arrow_shards::ArrowShard::new(file, schema)?),
        OutputFormat::Parquet => Box::new(parquet::ParquetShard::new(
            file,
            &crate::schema::with_hf_metadata(schema),
            compression,
        )?),
    })
}

struct OpenShard {
    writer: Box<dyn FormatWriter>,
    tmp: PathBuf,
    file: String,
    rows: u64,
    documents: u64,
}

/// Writes a task's rows into capped shards in `dir`.
pub struct TaskSink {
    dir: PathBuf,
    schema: SchemaRef,
    format: OutputFormat,
    compression: ParquetCompression,
    max_bytes: u64,
    max_rows: u64,
    open: Option<OpenShard>,
    pub shards: Vec<ShardInfo>,
}

impl TaskSink {
    pub fn new(dir: &Path, schema: SchemaRef, output: &OutputConfig) -> Self {
        TaskSink {
            dir: dir.to_path_buf(),
            schema,
            format: output.format,
            compression: output.parquet_compression,
            max_bytes: output.max_shard_bytes.max(1),
            max_rows: output.max_shard_rows.max(1),
            open: None,
            shards: Vec::new(),
        }
    }

    /// Write rows (already in the dataset schema). `window` tells which rows
    /// start a document.
    pub fn write(&mut self, mut batch: RecordBatch) -> Result<()> {
        while batch.num_rows() > 0 {
            if self.open.is_none() {
                self.open_shard()?;
            }
            let shard = self.open.as_mut().expect("opened above");
            let room = (self.max_rows - shard.rows) as usize;
            let take = batch.num_rows().min(room);
            let part = batch.slice(0, take);
            batch = batch.slice(take, batch.num_rows() - take);
            shard.documents += first_windows(&part);
            shard.rows += take as u64;
            let tmp = &shard.tmp;
            shard
                .writer
                .write(&part)
                .map_err(|e| e.in_file("write", tmp))?;
            if shard.rows >= self.max_rows || shard.writer.bytes() >= self.max_bytes {
                self.close()?;
            }
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let index = self.shards.len();
        let file = format!("part-{index:05}.{}", self.format.extension());
        let tmp = self.dir.join(format!("{file}.tmp"));
        let f = File::create(&tmp).at("create", &tmp)?;
        let hw = HashingWriter::new(BufWriter::with_capacity(1 << 20, f));
        let writer = open_format(self.format, self.compression, hw, &self.schema)?;
        self.open = Some(OpenShard {
            writer,
            tmp,
            file,
            rows: 0,
            documents: 0,
        });
        Ok(())
    }

    /// A shard with the schema and no rows, for a dataset whose every sample
    /// was rejected: readers still find a file to open. (`datasets` itself
    /// writes no file for an empty dataset, and then cannot load it.)
    pub fn write_empty(dir: &Path, schema: SchemaRef, output: &OutputConfig) -> Result<ShardInfo> {
        let mut sink = TaskSink::new(dir, schema.clone(), output);
        sink.open_shard()?;
        // One batch of no rows: readers that concatenate batches need one.
        let open = sink.open.as_mut().expect("opened above");
        open.writer.write(&RecordBatch::new_empty(schema))?;
        Ok(sink.finish()?.remove(0))
    }

    fn close(&mut self) -> Result<()> {
        let Some(shard) = self.open.take() else {
            return Ok(());
        };
        let (_, bytes, sha256) = shard
            .writer
            .finish()
            .map_err(|e| e.in_file("write", &shard.tmp))?
            .finish()
            .at("write", &shard.tmp)?;
        let dest = self.dir.join(&shard.file);
        std::fs::rename(&shard.tmp, &dest).at("rename", &shard.tmp)?;
        self.shards.push(ShardInfo {
            file: shard.file,
            rows: shard.rows,
            documents: shard.documents,
            bytes,
            sha256,
        });
        Ok(())
    }

    /// Close the open shard and return the list.
    pub fn finish(mut self) -> Result<Vec<ShardInfo>> {
        self.close()?;
        Ok(self.shards)
    }
}

/// Rows that stand for a sample of the input: the first window of a
/// document, and a sample itself rather than one of its augmented copies.
fn first_windows(batch: &RecordBatch) -> u64 {
    use arrow::array::AsArray;
    let zeros = |name: &str| {
        batch.column_by_name(name).map(|c| {
            c.as_primitive::<arrow::datatypes::UInt32Type>()
                .values()
                .iter()
                .map(|&v| v == 0)
                .collect::<Vec<bool>>()
        })
    };
    match (zeros("window"), zeros("augment")) {
        (None, None) => batch.num_rows() as u64,
        (Some(a), None) | (None, Some(a)) => a.iter().filter(|&&z| z).count() as u64,
        (Some(a), Some(b)) => a.iter().zip(&b).filter(|(x, y)| **x && **y).count() as u64,
    }
}
