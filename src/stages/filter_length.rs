//! `filter_length`: keep the rows whose token count or clip duration is
//! within `[min, max]`. A row outside is dropped on purpose, counted as
//! *filtered*, never as a reject: `samples_in = samples_out + rejected +
//! filtered` still holds.
//!
//! Token counts are the `length` column a `tokenize` stage (or a `chunk`
//! after it) writes; durations are `num_samples / sample_rate` of a
//! `decode_audio` stage's clip, in seconds. A bound left out does not
//! bound. Both may be set in one stage; a row is kept when it is within
//! every bound set.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef, UInt32Type};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stages::columns::keep_rows;
use crate::stages::{BatchContext, BuildContext, BuildError, BuildStage, Built, Stage};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterLengthConfig {
    /// Fewest tokens a row keeps (`length`).
    #[serde(default)]
    pub min_tokens: Option<u32>,
    /// Most tokens a row keeps (`length`).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Shortest clip kept, in seconds.
    #[serde(default)]
    pub min_seconds: Option<f64>,
    /// Longest clip kept, in seconds.
    #[serde(default)]
    pub max_seconds: Option<f64>,
}

impl BuildStage for FilterLengthConfig {
    fn build(&self, _cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        let tokens = self.min_tokens.is_some() || self.max_tokens.is_some();
        let seconds = self.min_seconds.is_some() || self.max_seconds.is_some();
        if !tokens && !seconds {
            return Err(BuildError::new(
                "type",
                "filter_length needs a bound: min_tokens, max_tokens, min_seconds or max_seconds",
            ));
        }
        if let (Some(lo), Some(hi)) = (self.min_tokens, self.max_tokens)
            && lo > hi
        {
            return Err(BuildError::new(
                "min_tokens",
                format!("min_tokens ({lo}) is above max_tokens ({hi})"),
            ));
        }
        for (key, v) in [
            ("min_seconds", self.min_seconds),
            ("max_seconds", self.max_seconds),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(BuildError::new(
                    key,
                    format!("{key} must be a number of seconds, 0 or more (got {v})"),
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_seconds, self.max_seconds)
            && lo > hi
        {
            return Err(BuildError::new(
                "min_seconds",
                format!("min_seconds ({lo}) is above max_seconds ({hi})"),
            ));
        }
        Ok(Built::Ready(Arc::new(FilterLength {
            config: self.clone(),
        })))
    }
}

pub struct FilterLength {
    config: FilterLengthConfig,
}

impl FilterLength {
    fn bounds_tokens(&self) -> bool {
        self.config.min_tokens.is_some() || self.config.max_tokens.is_some()
    }

    fn bounds_seconds(&self) -> bool {
        self.config.min_seconds.is_some() || self.config.max_seconds.is_some()
    }
}

fn within<T: PartialOrd>(v: T, lo: Option<T>, hi: Option<T>) -> bool {
    lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi)
}

/// The `u32` column `name` of `batch`.
fn u32_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a arrow::array::PrimitiveArray<UInt32Type>> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<UInt32Type>())
        .ok_or_else(|| {
            Error::Internal(format!(
                "filter_length: no uint32 column `{name}` in a batch whose schema was checked"
            ))
        })
}

impl Stage for FilterLength {
    fn name(&self) -> &str {
        "filter_length"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let need = |name: &str, from: &str| match input.field_with_name(name) {
            Ok(f) if f.data_type() == &DataType::UInt32 => Ok(()),
            _ => Err(Error::Config(format!(
                "filter_length: needs `{name}` from a {from} stage before it"
            ))),
        };
        if self.bounds_tokens() {
            need("length", "tokenize")?;
        }
        if self.bounds_seconds() {
            need("num_samples", "decode_audio")?;
            need("sample_rate", "decode_audio")?;
        }
        Ok(input.clone())
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let c = &self.config;
        let mut keep = vec![true; batch.num_rows()];
        if self.bounds_tokens() {
            let length = u32_column(&batch, "length")?;
            for (k, n) in keep.iter_mut().zip(length.values()) {
                *k &= within(*n, c.min_tokens, c.max_tokens);
            }
        }
        if self.bounds_seconds() {
            let samples = u32_column(&batch, "num_samples")?;
            let rates = u32_column(&batch, "sample_rate")?;
            for ((k, n), rate) in keep.iter_mut().zip(samples.values()).zip(rates.values()) {
                let seconds = *n as f64 / (*rate).max(1) as f64;
                *k &= within(seconds, c.min_seconds, c.max_seconds);
            }
        }
        let dropped = keep.iter().filter(|&&k| !k).count();
        cx.filtered += dropped as u64;
        keep_rows(batch, &keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejects::RejectSink;
    use arrow::array::{StringArray, UInt32Array};
    use arrow::datatypes::{Field, Schema};

    fn batch(lengths: &[u32]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sample_id", DataType::Utf8, false),
            Field::new("length", DataType::UInt32, false),
        ]));
        let ids: Vec<String> = (0..lengths.len()).map(|i| format!("s{i}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(UInt32Array::from(lengths.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_outside_the_bounds_are_filtered_not_rejected() {
        let stage = FilterLength {
            config: FilterLengthConfig {
                min_tokens: Some(2),
                max_tokens: Some(4),
                ..Default::default()
            },
        };
        let mut rejects = RejectSink::discard();
        let mut cx = BatchContext {
            seed: 0,
            stage: "filter_length",
            rejects: &mut rejects,
            filtered: 0,
        };
        let out = stage.process(batch(&[1, 2, 3, 4, 5]), &mut cx).unwrap();
        let kept: Vec<u32> = out
            .column_by_name("length")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .values()
            .to_vec();
        assert_eq!(kept, [2, 3, 4], "the bounds are inclusive");
        assert_eq!(cx.filtered, 2);
    }

    #[test]
    fn a_bound_needs_its_column() {
        let stage = FilterLength {
            config: FilterLengthConfig {
                max_seconds: Some(1.0),
                ..Default::default()
            },
        };
        let err = stage.output_schema(&batch(&[1]).schema()).unwrap_err();
        assert!(err.to_string().contains("num_samples"), "{err}");
    }
}
