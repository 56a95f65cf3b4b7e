//! Arrow IPC *stream* shards, the layout `datasets.save_to_disk` writes and
//! `datasets.load_from_disk` reads.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;

use super::{FormatWriter, ShardFile};
use crate::error::Result;

pub struct ArrowShard {
    schema: SchemaRef,
    writer: StreamWriter<ShardFile>,
}

impl ArrowShard {
    pub fn new(file: ShardFile, schema: &SchemaRef) -> Result<Self> {
        let schema = crate::schema::with_hf_metadata(schema);
        Ok(ArrowShard {
            writer: StreamWriter::try_new(file, &schema)?,
            schema,
        })
    }
}

impl FormatWriter for ArrowShard {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        // The schema carries metadata the batch does not; same columns.
        let batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())?;
        self.writer.write(&batch)?;
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.writer.get_ref().bytes()
    }

    fn finish(mut self: Box<Self>) -> Result<ShardFile> {
        self.writer.finish()?;
        Ok(self.writer.into_inner()?)
    }
}
