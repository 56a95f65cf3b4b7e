//! Parquet shards, row groups flushed by size so memory stays bounded.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{FormatWriter, ShardFile};
use crate::error::Result;
use crate::sinks::ParquetCompression;

/// A row group is flushed once this many bytes are buffered.
const ROW_GROUP_BYTES: usize = 64 << 20;

pub struct ParquetShard {
    writer: ArrowWriter<ShardFile>,
}

impl ParquetShard {
    pub fn new(
        file: ShardFile,
        schema: &SchemaRef,
        compression: ParquetCompression,
    ) -> Result<Self> {
        let compression = match compression {
            ParquetCompression::None => Compression::UNCOMPRESSED,
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
            ParquetCompression::Lz4 => Compression::LZ4_RAW,
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_created_by(format!("kiln {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(ParquetShard {
            writer: ArrowWriter::try_new(file, schema.clone(), Some(props))?,
        })
    }
}

impl FormatWriter for ParquetShard {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch)?;
        if self.writer.in_progress_size() >= ROW_GROUP_BYTES {
            self.writer.flush()?;
        }
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.writer.bytes_written() as u64 + self.writer.in_progress_size() as u64
    }

    fn finish(self: Box<Self>) -> Result<ShardFile> {
        Ok(self.writer.into_inner()?)
    }
}
