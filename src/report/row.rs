//! A sampled row, copied out of its batch, read by column name whatever
//! the column's Arrow type (a label as its class name, lists as numbers,
//! media structs as bytes); and HuggingFace feature descriptions as text.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, UInt64Type};

/// One row, copied out of its batch.
#[derive(Clone)]
pub struct Row {
    pub id: String,
    batch: RecordBatch,
}

/// A sampled original with its copies and windows, and the originals its
/// mixed copies took their second image from.
#[derive(Default)]
pub struct Group {
    /// The shard it was read from (by index in the manifest).
    pub shard: usize,
    pub original: Option<Row>,
    pub members: Vec<Row>,
    pub partners: Vec<Row>,
}

fn cast(col: &ArrayRef, to: &DataType) -> Option<ArrayRef> {
    arrow::compute::cast(col, to).ok()
}

/// A numeric column as `u64`s (`None` where null or absent).
pub fn u64_column(batch: &RecordBatch, name: &str) -> Option<Vec<Option<u64>>> {
    let c = cast(batch.column_by_name(name)?, &DataType::UInt64)?;
    Some(c.as_primitive::<UInt64Type>().iter().collect())
}

/// A string column (or anything that casts to one).
pub fn str_column(batch: &RecordBatch, name: &str) -> Option<Vec<Option<String>>> {
    let c = cast(batch.column_by_name(name)?, &DataType::Utf8)?;
    Some(
        c.as_string::<i32>()
            .iter()
            .map(|s| s.map(String::from))
            .collect(),
    )
}

/// A label column (`label`, `label_b`) as names: class names from the
/// field's metadata when it has them, else the value as text.
pub fn label_column(batch: &RecordBatch, name: &str) -> Option<impl Fn(usize) -> Option<String>> {
    let field = batch.schema().field_with_name(name).ok()?.clone();
    let names = crate::schema::class_names(&field);
    let values = str_column(batch, name)?;
    Some(move |i: usize| {
        let v = values.get(i)?.clone()?;
        Some(match (&names, v.parse::<usize>()) {
            (Some(n), Ok(k)) if k < n.len() => n[k].clone(),
            _ => v,
        })
    })
}

/// The values of a list cell, whatever its list type.
fn list_cell(col: &ArrayRef, row: usize) -> Option<ArrayRef> {
    if col.is_null(row) {
        return None;
    }
    match col.data_type() {
        DataType::List(_) => Some(col.as_list::<i32>().value(row)),
        DataType::LargeList(_) => Some(col.as_list::<i64>().value(row)),
        DataType::FixedSizeList(_, _) => Some(col.as_fixed_size_list().value(row)),
        _ => None,
    }
}

fn f64s(a: &ArrayRef) -> Option<Vec<f64>> {
    let c = cast(a, &DataType::Float64)?;
    Some(
        c.as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect(),
    )
}

impl Row {
    pub fn new(id: &str, batch: RecordBatch) -> Row {
        Row {
            id: id.to_string(),
            batch,
        }
    }

    pub fn col(&self, name: &str) -> Option<&ArrayRef> {
        self.batch.column_by_name(name).filter(|c| !c.is_null(0))
    }

    pub fn str(&self, name: &str) -> Option<String> {
        self.col(name)?;
        str_column(&self.batch, name)?.into_iter().next()?
    }

    pub fn u64(&self, name: &str) -> Option<u64> {
        self.col(name)?;
        u64_column(&self.batch, name)?.into_iter().next()?
    }

    pub fn f64(&self, name: &str) -> Option<f64> {
        let c = cast(self.col(name)?, &DataType::Float64)?;
        Some(c.as_primitive::<Float64Type>().value(0))
    }

    pub fn list(&self, name: &str) -> Option<Vec<f64>> {
        f64s(&list_cell(self.col(name)?, 0)?)
    }

    /// A list of lists (a mel spectrogram, masks).
    pub fn lists(&self, name: &str) -> Option<Vec<Vec<f64>>> {
        let outer = list_cell(self.col(name)?, 0)?;
        (0..outer.len())
            .map(|i| f64s(&list_cell(&outer, i)?))
            .collect()
    }

    pub fn label(&self) -> Option<String> {
        label_column(&self.batch, "label")?(0)
    }

    /// The mixed-in image's label name.
    pub fn label_b(&self) -> Option<String> {
        label_column(&self.batch, "label_b")?(0)
    }

    /// The bytes of a `struct<bytes, path>` media column.
    pub fn media(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.col(name)?.as_struct_opt()?;
        let b = s.column_by_name("bytes")?;
        if b.is_null(0) {
            return None;
        }
        Some(b.as_binary_opt::<i32>()?.value(0).to_vec())
    }

    pub fn mel(&self) -> Option<Vec<Vec<f32>>> {
        let m = self.lists("mel")?;
        Some(
            m.into_iter()
                .map(|r| r.into_iter().map(|v| v as f32).collect())
                .collect(),
        )
    }

    pub fn pairs(&self, name: &str) -> Vec<[u32; 2]> {
        self.lists(name)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.len() == 2)
            .map(|p| [p[0] as u32, p[1] as u32])
            .collect()
    }
}

/// A HuggingFace feature description as short text.
pub fn feature_text(v: &serde_json::Value) -> String {
    match v["_type"].as_str() {
        Some("Value") => format!("Value({})", v["dtype"].as_str().unwrap_or("?")),
        Some("ClassLabel") => {
            let names: Vec<&str> = v["names"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
                .unwrap_or_default();
            format!("ClassLabel({})", names.join(", "))
        }
        Some("List") | Some("Sequence") => match v["length"].as_i64() {
            Some(n) if n >= 0 => format!("List({}, length={n})", feature_text(&v["feature"])),
            _ => format!("List({})", feature_text(&v["feature"])),
        },
        Some("Audio") => match v["sampling_rate"].as_u64() {
            Some(r) => format!("Audio({r} Hz)"),
            None => "Audio".into(),
        },
        Some(t) => t.to_string(),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_read_as_short_text() {
        let v = serde_json::json!({"_type": "List", "feature": {"_type": "Value", "dtype": "float32"}, "length": 1280});
        assert_eq!(feature_text(&v), "List(Value(float32), length=1280)");
    }
}
