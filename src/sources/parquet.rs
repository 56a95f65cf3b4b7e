//! Parquet tables: the document in a named string column; splits are ranges
//! of row groups. A remote file is read by ranges: the footer, then the
//! column chunks of the row groups a split reads.

use std::fs::File;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{InputSpec, ReadOptions, RecordBuilder, SourceReader, Split};
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::{RejectSink, Rejection};
use crate::sources::input::InputFormat;

/// A Parquet file on disk or in an object store.
enum ParquetFile {
    Local(File),
    #[cfg(feature = "cloud")]
    Remote(crate::storage::RemoteFile),
}

impl ParquetFile {
    fn open(location: &str) -> std::io::Result<ParquetFile> {
        if crate::storage::is_url(location) {
            #[cfg(feature = "cloud")]
            return crate::storage::RemoteFile::open(location).map(ParquetFile::Remote);
        }
        Ok(ParquetFile::Local(crate::storage::local::open_regular(
            location,
        )?))
    }
}

impl parquet::file::reader::Length for ParquetFile {
    fn len(&self) -> u64 {
        match self {
            ParquetFile::Local(f) => f.len(),
            #[cfg(feature = "cloud")]
            ParquetFile::Remote(r) => r.len(),
        }
    }
}

impl parquet::file::reader::ChunkReader for ParquetFile {
    type T = Box<dyn std::io::Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        match self {
            ParquetFile::Local(f) => Ok(Box::new(EofGuard::new(f.get_read(start)?))),
            #[cfg(feature = "cloud")]
            ParquetFile::Remote(r) => {
                use std::io::Seek;
                let mut r = r.clone();
                r.seek(std::io::SeekFrom::Start(start))?;
                Ok(Box::new(EofGuard::new(r)))
            }
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        match self {
            ParquetFile::Local(f) => f.get_bytes(start, length),
            #[cfg(feature = "cloud")]
            ParquetFile::Remote(r) => r
                .range(start, length as u64)
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e))),
        }
    }
}

/// A reader that fails once it has ended many times over. The Parquet
/// crate's metadata reader skips what a page header claims by reading it,
/// and a header claiming a list of billions of strings past the end of the
/// file made it read the end again for each (minutes of CPU for a 750-byte
/// file; found by the `parquet` fuzz target). A sound reader stops at the
/// first end.
struct EofGuard<R> {
    inner: R,
    ends: u32,
}

impl<R> EofGuard<R> {
    fn new(inner: R) -> Self {
        EofGuard { inner, ends: 0 }
    }
}

impl<R: std::io::Read> std::io::Read for EofGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ends += 1;
            if self.ends > 64 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ends where its metadata says more follows",
                ));
            }
        }
        Ok(n)
    }
}

/// Row counts of each row group, read from the footer only. `Err` when the
/// file is not Parquet (the planner turns that into a reject).
pub fn row_groups(path: &str) -> std::result::Result<Vec<u64>, String> {
    let file = ParquetFile::open(path).map_err(|e| e.to_string())?;
    let builder =
        guarded(|| ParquetRecordBatchReaderBuilder::try_new(file))?.map_err(|e| e.to_string())?;
    builder
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| {
            u64::try_from(rg.num_rows())
                .map_err(|_| format!("a row group claims {} rows", rg.num_rows()))
        })
        .collect()
}

/// A call into the Parquet and Arrow readers, which panic on some malformed
/// files (a footer whose Arrow schema holds a zero-width integer did): the
/// panic becomes an error, so that one bad file is a reject, not a crash.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    crate::error::catch_panic(f)
        .map_err(|why| format!("the Parquet reader failed on this file: {why}"))
}

/// Above this many rows, a failed range is one reject that counts them all.
const LIST_REJECTED_ROWS: u64 = 10_000;

pub struct ParquetReader {
    split: Split,
    text_field: String,
    columns: Vec<String>,
    reader: Option<ParquetRecordBatchReader>,
    /// A decoded batch not yet taken whole.
    pending: Option<Pending>,
    opened: bool,
    /// Row number (in the file) of the next row to read.
    next_row: u64,
    /// One past the last row of the split.
    end_row: u64,
    limits: Limits,
    batch_rows: usize,
    builder: RecordBuilder,
}

fn reject(path: &str, pos: u64, kind: &str, message: impl Into<String>) -> crate::rejects::Reject {
    super::reject(InputFormat::Parquet, path, pos, kind, message)
}

impl ParquetReader {
    pub fn new(
        split: &Split,
        spec: &InputSpec,
        opts: &ReadOptions,
        builder: RecordBuilder,
    ) -> Self {
        ParquetReader {
            split: split.clone(),
            text_field: spec.text_field.clone(),
            columns: spec.columns.clone(),
            reader: None,
            pending: None,
            opened: false,
            next_row: split.first_row,
            end_row: split.first_row,
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder,
        }
    }

    fn open(&mut self) -> std::result::Result<ParquetRecordBatchReader, Rejection> {
        let file = ParquetFile::open(&self.split.path).map_err(|e| {
            match e.kind() == std::io::ErrorKind::PermissionDenied {
                true => (super::PERMISSION_DENIED, e.to_string()),
                false => ("unreadable", format!("cannot read the file: {e}")),
            }
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
            (
                "invalid_parquet",
                format!("not a readable Parquet file: {e}"),
            )
        })?;
        let groups: Vec<usize> = (self.split.start as usize..self.split.end as usize).collect();
        if self.split.end as usize > builder.metadata().num_row_groups()
            || groups
                .iter()
                .any(|&g| builder.metadata().row_group(g).num_rows() < 0)
        {
            return Err((
                "invalid_parquet",
                "the row groups differ from the planned ones (the file changed?)".into(),
            ));
        }
        self.end_row = groups
            .iter()
            .map(|&g| builder.metadata().row_group(g).num_rows() as u64)
            .fold(self.split.first_row, u64::saturating_add);
        let schema = builder.schema().clone();
        let field = schema.field_with_name(&self.text_field).map_err(|_| {
            (
                "missing_column",
                format!("the table has no column `{}`", self.text_field),
            )
        })?;
        if !matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err((
                "wrong_type",
                format!(
                    "column `{}` is {}, expected a string",
                    self.text_field,
                    field.data_type()
                ),
            ));
        }
        let mut wanted = vec![self.text_field.as_str()];
        wanted.extend(
            self.columns
                .iter()
                .map(String::as_str)
                .filter(|c| schema.field_with_name(c).is_ok()),
        );
        // Rows per batch: fewer when the text column's rows are large on
        // average, so a batch of long documents stays around 8 MiB.
        let leaf = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.name() == self.text_field);
        let row_bytes = leaf.map_or(0, |leaf| {
            groups
                .iter()
                .map(|&g| {
                    let rg = builder.metadata().row_group(g);
                    rg.column(leaf).uncompressed_size().max(0) as u64 / rg.num_rows().max(1) as u64
                })
                .max()
                .unwrap_or(0)
        });
        let batch_rows =
            ((8u64 << 20) / row_bytes.max(1)).clamp(1, self.batch_rows as u64) as usize;
        let mask = ProjectionMask::columns(builder.parquet_schema(), wanted.iter().copied());
        builder
            .with_row_groups(groups)
            .with_projection(mask)
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| {
                (
                    "invalid_parquet",
                    format!("cannot read the row groups: {e}"),
                )
            })
    }

    /// Reject every row from `next_row` to the end of the split: one reject
    /// per row, or one standing for them all when there are very many.
    fn reject_rest(&mut self, kind: &str, message: &str, rejects: &mut RejectSink) -> Result<()> {
        let (start, end) = (self.next_row, self.end_row.max(self.next_row + 1));
        if end - start > LIST_REJECTED_ROWS {
            let msg = format!("{message} (rows {start} to {} of the file)", end - 1);
            rejects.push_counted(reject(&self.split.name, start, kind, msg), end - start)?;
        } else {
            for row in start..end {
                rejects.push(reject(&self.split.name, row, kind, message))?;
            }
        }
        self.next_row = end;
        Ok(())
    }
}

impl SourceReader for ParquetReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        if !self.opened {
            self.opened = true;
            let opened = guarded(|| self.open()).unwrap_or_else(|m| Err(("invalid_parquet", m)));
            match opened {
                Ok(r) => self.reader = Some(r),
                Err((kind, _)) if kind == super::PERMISSION_DENIED => {
                    return Err(super::denied(&self.split.path));
                }
                Err((kind, msg)) => {
                    self.reject_rest(kind, &msg, rejects)?;
                    return Ok(None);
                }
            }
        }
        // Until the builder is full or the split is read.
        loop {
            if self.pending.is_none() {
                let Some(reader) = self.reader.as_mut() else {
                    break;
                };
                let next = guarded(|| reader.next()).unwrap_or_else(|m| {
                    Some(Err(arrow::error::ArrowError::ExternalError(m.into())))
                });
                match next {
                    None => {
                        self.reader = None;
                        break;
                    }
                    Some(Ok(b)) => self.pending = Some(self.decode(&b)),
                    Some(Err(e)) => {
                        self.reader = None;
                        let msg = format!("cannot decode the rows: {e}");
                        self.reject_rest("invalid_parquet", &msg, rejects)?;
                        break;
                    }
                }
            }
            let mut pending = self.pending.take().expect("decoded above");
            self.take_rows(&mut pending, rejects)?;
            if pending.next < pending.rows {
                self.pending = Some(pending);
            } else {
                self.next_row += pending.rows as u64;
            }
            if self.builder.is_full(self.batch_rows) {
                break;
            }
        }
        self.builder.finish()
    }
}

/// A decoded batch, its columns as large strings, and how far it was taken.
struct Pending {
    rows: usize,
    /// The text column, or why it cannot be read as text.
    text: std::result::Result<ArrayRef, String>,
    extras: Vec<Option<ArrayRef>>,
    next: usize,
}

impl ParquetReader {
    fn decode(&self, batch: &RecordBatch) -> Pending {
        // Large strings never overflow 32-bit offsets, whatever the batch holds.
        let as_strings = |name: &str| -> Option<std::result::Result<ArrayRef, String>> {
            let col = batch.column_by_name(name)?;
            Some(cast(col, &DataType::LargeUtf8).map_err(|e| e.to_string()))
        };
        Pending {
            rows: batch.num_rows(),
            text: as_strings(&self.text_field)
                .unwrap_or_else(|| Err("the column is missing".into())),
            extras: self
                .columns
                .iter()
                .map(|c| as_strings(c).and_then(|r| r.ok()))
                .collect(),
            next: 0,
        }
    }

    /// Move good rows of a decoded batch into the builder until it is full.
    fn take_rows(&mut self, p: &mut Pending, rejects: &mut RejectSink) -> Result<()> {
        let text = match &p.text {
            Ok(t) => t.as_string::<i64>(),
            Err(e) => {
                for row in p.next..p.rows {
                    let msg = format!("column `{}` cannot be read as text: {e}", self.text_field);
                    rejects.push(reject(
                        &self.split.name,
                        self.next_row + row as u64,
                        "wrong_type",
                        msg,
                    ))?;
                }
                p.next = p.rows;
                return Ok(());
            }
        };
        while p.next < p.rows && !self.builder.is_full(self.batch_rows) {
            let row = p.next;
            p.next += 1;
            let pos = self.next_row + row as u64;
            if text.is_null(row) {
                let msg = format!("`{}` is null", self.text_field);
                rejects.push(reject(&self.split.name, pos, "missing_field", msg))?;
                continue;
            }
            let t = text.value(row);
            if let Err((kind, msg)) = super::check_document(t, &self.limits) {
                rejects.push(reject(&self.split.name, pos, kind, msg))?;
                continue;
            }
            let ex: Vec<Option<&str>> = p
                .extras
                .iter()
                .map(|a| {
                    a.as_ref().and_then(|a| {
                        let s = a.as_string::<i64>();
                        (!s.is_null(row)).then(|| s.value(row))
                    })
                })
                .collect();
            self.builder.push(pos, t, &ex);
        }
        Ok(())
    }
}
