//! Parquet tables: the document in a named string column; splits are ranges
//! of row groups.

use std::fs::File;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::{InputSpec, ReadOptions, RecordBuilder, SourceReader, Split};
use crate::config::{InputFormat, Limits};
use crate::error::Result;
use crate::rejects::RejectSink;

/// Row counts of each row group, read from the footer only. `Err` when the
/// file is not Parquet (the planner turns that into a reject).
pub fn row_groups(path: &str) -> std::result::Result<Vec<u64>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    Ok(builder
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows() as u64)
        .collect())
}

pub struct ParquetReader {
    split: Split,
    text_field: String,
    columns: Vec<String>,
    reader: Option<ParquetRecordBatchReader>,
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
            opened: false,
            next_row: split.first_row,
            end_row: split.first_row,
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder,
        }
    }

    fn open(&mut self) -> std::result::Result<ParquetRecordBatchReader, (&'static str, String)> {
        let file = File::open(&self.split.path)
            .map_err(|e| ("unreadable", format!("cannot read the file: {e}")))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
            (
                "invalid_parquet",
                format!("not a readable Parquet file: {e}"),
            )
        })?;
        let groups: Vec<usize> = (self.split.start as usize..self.split.end as usize).collect();
        self.end_row = self.split.first_row
            + groups
                .iter()
                .map(|&g| builder.metadata().row_group(g).num_rows() as u64)
                .sum::<u64>();
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
        let mask = ProjectionMask::columns(builder.parquet_schema(), wanted.iter().copied());
        builder
            .with_row_groups(groups)
            .with_projection(mask)
            .with_batch_size(self.batch_rows)
            .build()
            .map_err(|e| {
                (
                    "invalid_parquet",
                    format!("cannot read the row groups: {e}"),
                )
            })
    }

    /// Reject every row from `next_row` to the end of the split.
    fn reject_rest(&mut self, kind: &str, message: &str, rejects: &mut RejectSink) -> Result<()> {
        let (start, end) = (self.next_row, self.end_row.max(self.next_row + 1));
        for row in start..end {
            rejects.push(reject(&self.split.path, row, kind, message))?;
        }
        self.next_row = end;
        Ok(())
    }
}

impl SourceReader for ParquetReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        if !self.opened {
            self.opened = true;
            match self.open() {
                Ok(r) => self.reader = Some(r),
                Err((kind, msg)) => {
                    // Without a footer the row count is unknown: one reject
                    // stands for the file.
                    self.reject_rest(kind, &msg, rejects)?;
                    return Ok(None);
                }
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        let batch = match reader.next() {
            None => {
                self.reader = None;
                return Ok(None);
            }
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                self.reader = None;
                self.reject_rest(
                    "invalid_parquet",
                    &format!("cannot decode the rows: {e}"),
                    rejects,
                )?;
                return Ok(None);
            }
        };
        let as_strings = |name: &str| -> Option<arrow::array::ArrayRef> {
            let col = batch.column_by_name(name)?;
            cast(col, &DataType::Utf8).ok()
        };
        let text = as_strings(&self.text_field).expect("the text column was checked when opened");
        let text = text.as_string::<i32>();
        let extras: Vec<Option<arrow::array::ArrayRef>> =
            self.columns.iter().map(|c| as_strings(c)).collect();
        for row in 0..batch.num_rows() {
            let pos = self.next_row + row as u64;
            if text.is_null(row) {
                rejects.push(reject(
                    &self.split.path,
                    pos,
                    "missing_field",
                    format!("`{}` is null", self.text_field),
                ))?;
                continue;
            }
            let t = text.value(row);
            if let Err((kind, msg)) = super::check_document(t, &self.limits) {
                rejects.push(reject(&self.split.path, pos, kind, msg))?;
                continue;
            }
            let ex: Vec<Option<&str>> = extras
                .iter()
                .map(|a| {
                    a.as_ref().and_then(|a| {
                        let s = a.as_string::<i32>();
                        (!s.is_null(row)).then(|| s.value(row))
                    })
                })
                .collect();
            self.builder.push(pos, t, &ex);
        }
        self.next_row += batch.num_rows() as u64;
        match self.builder.finish()? {
            Some(b) => Ok(Some(b)),
            // A batch where every row was rejected: go on to the next.
            None => self.next_batch(rejects),
        }
    }
}
