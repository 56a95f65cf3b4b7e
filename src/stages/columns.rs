//! Column helpers every stage uses: schemas and batches with columns
//! replaced or added, rows kept or rejected, fixed-size lists, per-row seeds.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::rejects::Rejection;
use crate::stages::BatchContext;

/// The schema with `drop` removed and `add` appended (replacing columns of
/// the same name).
pub fn schema_with(input: &Schema, drop: &[&str], add: &[Field]) -> SchemaRef {
    let mut fields: Vec<Field> = input
        .fields()
        .iter()
        .filter(|f| !drop.contains(&f.name().as_str()))
        .filter(|f| !add.iter().any(|a| a.name() == f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(add.iter().cloned());
    Arc::new(Schema::new(fields))
}

/// `batch` (already filtered to the kept rows) with `drop` removed and the
/// new columns appended, in `schema`'s order.
pub fn batch_with(
    batch: &RecordBatch,
    schema: &SchemaRef,
    added: Vec<(&str, ArrayRef)>,
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            added
                .iter()
                .find(|(n, _)| *n == f.name())
                .map(|(_, a)| a.clone())
                .or_else(|| batch.column_by_name(f.name()).cloned())
                .ok_or_else(|| Error::Internal(format!("no column `{}`", f.name())))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The rows of `batch` whose result is `Ok`, with their values; the others
/// are rejected with their reasons.
pub fn keep_ok<T>(
    batch: RecordBatch,
    results: Vec<std::result::Result<T, Rejection>>,
    cx: &mut BatchContext,
) -> Result<(RecordBatch, Vec<T>)> {
    let mut keep = Vec::with_capacity(results.len());
    let mut values = Vec::with_capacity(results.len());
    for (row, r) in results.into_iter().enumerate() {
        keep.push(r.is_ok());
        match r {
            Ok(v) => values.push(v),
            Err((kind, msg)) => cx.reject(&batch, row, kind, msg)?,
        }
    }
    Ok((keep_rows(batch, &keep)?, values))
}

/// Rows of `batch` where `keep` is true.
pub fn keep_rows(batch: RecordBatch, keep: &[bool]) -> Result<RecordBatch> {
    if keep.iter().all(|&k| k) {
        return Ok(batch);
    }
    Ok(arrow::compute::filter_record_batch(
        &batch,
        &keep.to_vec().into(),
    )?)
}

/// A fixed-size list of `n` values of `ty` a row.
pub fn fixed_list_type(ty: DataType, n: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", ty, true)), n as i32)
}

pub fn fixed_list_field(name: &str, ty: DataType, n: usize) -> Field {
    Field::new(name, fixed_list_type(ty, n), false)
}

/// A fixed-size list column of `f32` with `n` values a row.
pub fn f32_list(values: Vec<f32>, n: usize) -> Result<ArrayRef> {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    Ok(Arc::new(arrow::array::FixedSizeListArray::try_new(
        item,
        n as i32,
        Arc::new(arrow::array::Float32Array::from(values)),
        None,
    )?))
}

/// The seed of every row's generator in this stage (see
/// [`BatchContext::sample_seed`]), computed before rows go to other threads.
pub fn sample_seeds(batch: &RecordBatch, cx: &BatchContext) -> Result<Vec<u64>> {
    let ids = batch
        .column_by_name("sample_id")
        .ok_or_else(|| Error::Internal(format!("{}: no `sample_id` column", cx.stage)))?
        .as_string::<i32>();
    Ok((0..batch.num_rows())
        .map(|r| cx.sample_seed(ids.value(r)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejects::RejectSink;
    use arrow::array::UInt32Array;
    use arrow::datatypes::{DataType, Field, Schema};

    /// A batch that lost a column its schema promised is kiln's bug, and
    /// says so, rather than an error the user could fix.
    #[test]
    fn a_missing_promised_column_is_an_internal_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt32, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(UInt32Array::from(vec![1]))]).unwrap();
        let mut rejects = RejectSink::discard();
        let cx = BatchContext {
            seed: 0,
            stage: "mix",
            rejects: &mut rejects,
            filtered: 0,
        };
        let err = sample_seeds(&batch, &cx).unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
        assert!(err.to_string().contains("please report"), "{err}");
    }
}
