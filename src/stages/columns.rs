//! Column helpers every stage uses: schemas and batches with columns
//! replaced or added, rows kept or rejected, fixed-size lists, per-row seeds.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::rejects::Rejection;
use crate::simd::peak_bits;
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

/// Rows of a stage's output that hold a NaN or an infinite float (in any
/// float column, lists and structs included) are rejected (`non_finite`,
/// naming the column and the count): a stage's invented or broken numbers
/// never become rows. Null slots are not looked at.
pub fn reject_non_finite(batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
    let mut bad: Vec<Option<(String, usize)>> = vec![None; batch.num_rows()];
    let mut any = false;
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let counts = non_finite_per_row(column.as_ref());
        if counts.is_empty() {
            continue;
        }
        for (row, &n) in counts.iter().enumerate() {
            if n > 0 && bad[row].is_none() {
                bad[row] = Some((field.name().clone(), n));
                any = true;
            }
        }
    }
    if !any {
        return Ok(batch);
    }
    let results: Vec<std::result::Result<(), Rejection>> = bad
        .into_iter()
        .map(|b| match b {
            None => Ok(()),
            Some((column, n)) => Err((
                "non_finite",
                format!("`{column}` holds {n} NaN or infinite values"),
            )),
        })
        .collect();
    Ok(keep_ok(batch, results, cx)?.0)
}

/// For each row, how many non-finite floats it holds; empty when the array
/// holds none (the common case, found with one pass over the values).
fn non_finite_per_row(a: &dyn Array) -> Vec<usize> {
    use arrow::datatypes::{Float32Type, Float64Type};
    let per_value = |finite: &dyn Fn(usize) -> bool, len: usize| -> Vec<usize> {
        let counts: Vec<usize> = (0..len)
            .map(|i| usize::from(a.is_valid(i) && !finite(i)))
            .collect();
        match counts.iter().any(|&c| c > 0) {
            true => counts,
            false => Vec::new(),
        }
    };
    // Rows of a list-like array from its children's counts and offsets.
    let gather = |child: Vec<usize>, ranges: &mut dyn Iterator<Item = (usize, usize)>| {
        if child.is_empty() {
            return Vec::new();
        }
        ranges
            .enumerate()
            .map(|(row, (s, e))| match a.is_valid(row) {
                true => child[s..e].iter().sum(),
                false => 0,
            })
            .collect()
    };
    match a.data_type() {
        DataType::Float32 => {
            let v = a.as_primitive::<Float32Type>().values();
            if peak_bits(v) < f32::INFINITY.to_bits() {
                return Vec::new();
            }
            per_value(&|i| v[i].is_finite(), v.len())
        }
        DataType::Float64 => {
            let v = a.as_primitive::<Float64Type>().values();
            let peak = v.chunks(256).map(|c| {
                c.iter()
                    .fold(0u64, |m, x| m.max(x.to_bits() & 0x7fff_ffff_ffff_ffff))
            });
            if peak.max().unwrap_or(0) < f64::INFINITY.to_bits() {
                return Vec::new();
            }
            per_value(&|i| v[i].is_finite(), v.len())
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let child = non_finite_per_row(l.values().as_ref());
            let o = l.value_offsets();
            gather(
                child,
                &mut o.windows(2).map(|w| (w[0] as usize, w[1] as usize)),
            )
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let child = non_finite_per_row(l.values().as_ref());
            let o = l.value_offsets();
            gather(
                child,
                &mut o.windows(2).map(|w| (w[0] as usize, w[1] as usize)),
            )
        }
        DataType::FixedSizeList(_, n) => {
            let l = a.as_fixed_size_list();
            let child = non_finite_per_row(l.values().as_ref());
            let n = *n as usize;
            gather(child, &mut (0..l.len()).map(|r| (r * n, (r + 1) * n)))
        }
        DataType::Struct(_) => {
            let s = a.as_struct();
            let mut out: Vec<usize> = Vec::new();
            for c in s.columns() {
                let child = non_finite_per_row(c.as_ref());
                if child.is_empty() {
                    continue;
                }
                out.resize(s.len(), 0);
                for (row, n) in child.into_iter().enumerate() {
                    if s.is_valid(row) {
                        out[row] += n;
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejects::RejectSink;
    use arrow::array::{Float64Array, ListArray, StringArray, UInt32Array};
    use arrow::datatypes::Float32Type;

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

    #[test]
    fn rows_with_a_nan_or_an_infinity_anywhere_are_rejected_and_null_slots_are_not_read() {
        let features = f32_list(vec![0.5, 1.0, f32::NAN, 2.0, 3.0, 4.0, 5.0, 6.0], 2).unwrap();
        let mel = ListArray::from_iter_primitive::<Float32Type, _, _>([
            Some(vec![Some(1.0)]),
            Some(vec![Some(2.0)]),
            Some(vec![Some(f32::INFINITY), Some(f32::NEG_INFINITY)]),
            Some(vec![]),
        ]);
        // A null slot may hold any bits: here a NaN, which is not a value.
        let lam = Float64Array::from(vec![Some(0.5), Some(0.5), Some(0.5), None]);
        let lam = {
            let data = lam.into_data();
            let mut values = data.buffers()[0].typed_data::<f64>().to_vec();
            values[3] = f64::NAN;
            let b = data
                .into_builder()
                .buffers(vec![arrow::buffer::Buffer::from_vec(values)])
                .build()
                .unwrap();
            Float64Array::from(b)
        };
        let ids = StringArray::from(vec!["a", "b", "c", "d"]);
        let batch = RecordBatch::try_from_iter([
            ("sample_id", Arc::new(ids) as ArrayRef),
            ("features", features),
            ("mel", Arc::new(mel)),
            ("lambda", Arc::new(lam)),
        ])
        .unwrap();
        let mut rejects = RejectSink::discard();
        let mut cx = BatchContext {
            seed: 0,
            stage: "some_stage",
            rejects: &mut rejects,
            filtered: 0,
        };
        let out = reject_non_finite(batch, &mut cx).unwrap();
        let kept: Vec<&str> = out
            .column_by_name("sample_id")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(kept, ["a", "d"]);
        assert_eq!(rejects.total, 2);
        assert_eq!(rejects.counts["some_stage/non_finite"], 2);
        // A batch without any is passed through untouched.
        let clean = RecordBatch::try_from_iter([(
            "x",
            Arc::new(Float64Array::from(vec![1.0, f64::MAX])) as ArrayRef,
        )])
        .unwrap();
        let mut rejects = RejectSink::discard();
        let mut cx = BatchContext {
            seed: 0,
            stage: "s",
            rejects: &mut rejects,
            filtered: 0,
        };
        assert_eq!(reject_non_finite(clean.clone(), &mut cx).unwrap(), clean);
    }
}
