//! The Arrow schemas each dataset kind promises (`schemas/*.json`), and their
//! HuggingFace `datasets` feature descriptions.
//!
//! The sink projects what the stages produce onto the kind's schema and
//! refuses a batch that does not fit, so a dataset never drifts from its
//! declared layout.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
pub struct KindSchema {
    pub kind: String,
    pub fields: Vec<KindField>,
    /// Type of any column beyond `fields` (the inputs' extra columns).
    pub extra_columns: String,
}

#[derive(Debug, Deserialize)]
pub struct KindField {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
}

pub static TEXT: LazyLock<KindSchema> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../schemas/text.json")).expect("schemas/text.json is valid")
});

pub static IMAGE: LazyLock<KindSchema> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../schemas/image.json"))
        .expect("schemas/image.json is valid")
});

pub static AUDIO: LazyLock<KindSchema> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../schemas/audio.json"))
        .expect("schemas/audio.json is valid")
});

pub static MULTIMODAL: LazyLock<KindSchema> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../schemas/multimodal.json"))
        .expect("schemas/multimodal.json is valid")
});

/// Field metadata key naming the `datasets` feature a struct column is
/// (`Image` or `Audio`, whose Arrow types are the same).
pub const HF_FEATURE: &str = "kiln.hf_feature";
/// Field metadata key of an `Audio` column's sample rate.
pub const SAMPLE_RATE: &str = "kiln.sample_rate";

/// Field metadata key holding a class label's names (a JSON list).
pub const CLASS_NAMES: &str = "kiln.class_names";

fn parse_type(ty: &str) -> DataType {
    match ty {
        "string" => DataType::Utf8,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "float32" => DataType::Float32,
        t if t.starts_with("list<") && t.ends_with('>') => DataType::List(Arc::new(Field::new(
            "item",
            parse_type(&t[5..t.len() - 1]),
            true,
        ))),
        other => panic!("unknown type `{other}` in schemas/"),
    }
}

fn media_struct_fields() -> arrow::datatypes::Fields {
    vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]
    .into()
}

/// The Arrow type of an HF `Image` or `Audio` feature: encoded file bytes
/// and a path.
pub fn media_struct_type() -> DataType {
    DataType::Struct(media_struct_fields())
}

/// A column of that type: each row's encoded `files`, with the batch's
/// `path` column beside them.
pub fn media_struct_column(batch: &RecordBatch, files: Vec<Vec<u8>>) -> Result<ArrayRef> {
    let paths = batch
        .column_by_name("path")
        .cloned()
        .ok_or_else(|| Error::Internal("no `path` column beside the encoded files".into()))?;
    let bytes = arrow::array::BinaryArray::from_iter_values(files);
    Ok(Arc::new(arrow::array::StructArray::try_new(
        media_struct_fields(),
        vec![Arc::new(bytes) as ArrayRef, paths],
        None,
    )?))
}

/// Whether `ty` is what the schema type `spec` promises. Besides the plain
/// types: `fixed_list<T>` is a fixed-size list of any length,
/// `tensor<T>` fixed-size lists nested to any depth, `image` and `audio`
/// the struct of datasets' Image and Audio features.
fn type_matches(spec: &str, ty: &DataType) -> bool {
    let inner = |prefix: &str| spec.strip_prefix(prefix).and_then(|t| t.strip_suffix('>'));
    if let Some(item) = inner("list<") {
        return matches!(ty, DataType::List(f) if type_matches(item, f.data_type()));
    }
    if let Some(item) = inner("fixed_list<") {
        return matches!(ty, DataType::FixedSizeList(f, _) if type_matches(item, f.data_type()));
    }
    if let Some(item) = inner("tensor<") {
        return match ty {
            DataType::FixedSizeList(f, _) => {
                type_matches(item, f.data_type()) || type_matches(spec, f.data_type())
            }
            _ => false,
        };
    }
    if spec == "image" || spec == "audio" {
        return ty == &media_struct_type();
    }
    ty == &parse_type(spec)
}

impl KindSchema {
    /// The output schema for what the stages produce: the kind's fields in
    /// order (optional ones when present), then extra columns. `Err` names
    /// what does not fit.
    pub fn output_schema(&self, produced: &SchemaRef) -> std::result::Result<SchemaRef, String> {
        let mut fields = Vec::new();
        for f in &self.fields {
            match produced.field_with_name(&f.name) {
                Ok(got) if type_matches(&f.ty, got.data_type()) => fields.push(
                    Field::new(&f.name, got.data_type().clone(), !f.required)
                        .with_metadata(got.metadata().clone()),
                ),
                Ok(got) => {
                    return Err(format!(
                        "column `{}` is {}, the {} schema says {}",
                        f.name,
                        got.data_type(),
                        self.kind,
                        f.ty
                    ));
                }
                Err(_) if f.required => {
                    return Err(format!(
                        "the pipeline produces no `{}`, which the {} schema requires",
                        f.name, self.kind
                    ));
                }
                Err(_) => {}
            }
        }
        let extra = parse_type(&self.extra_columns);
        // `_`-prefixed columns are the stages' working columns (encoded bytes,
        // pixels), never stored.
        let known = |n: &str| {
            self.fields.iter().any(|f| f.name == n)
                || matches!(n, "source" | "position")
                || n.starts_with('_')
        };
        for f in produced.fields().iter().filter(|f| !known(f.name())) {
            if f.data_type() != &extra {
                return Err(format!(
                    "extra column `{}` is {}, expected {}",
                    f.name(),
                    f.data_type(),
                    self.extra_columns
                ));
            }
            fields.push(Field::new(f.name(), extra.clone(), true));
        }
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// Project `batch` onto `schema` (by column name), checking types.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = batch
            .column_by_name(f.name())
            .ok_or_else(|| Error::Internal(format!("sink: batch has no column `{}`", f.name())))?;
        if col.data_type() != f.data_type() {
            return Err(Error::Execution(format!(
                "sink: column `{}` is {}, schema says {}",
                f.name(),
                col.data_type(),
                f.data_type()
            )));
        }
        columns.push(col.clone());
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The class names a label field carries, in id order.
pub fn class_names(field: &Field) -> Option<Vec<String>> {
    serde_json::from_str(field.metadata().get(CLASS_NAMES)?).ok()
}

/// HuggingFace `datasets` feature description of a column: `ClassLabel`
/// when the field carries class names, `Image` or `Audio` for their struct.
pub fn hf_field_feature(field: &Field) -> Value {
    if let Some(names) = class_names(field) {
        return json!({ "names": names, "_type": "ClassLabel" });
    }
    if field.data_type() == &media_struct_type() {
        let meta = field.metadata();
        if meta.get(HF_FEATURE).map(String::as_str) == Some("Audio") {
            let rate: Option<u32> = meta.get(SAMPLE_RATE).and_then(|r| r.parse().ok());
            return json!({ "sampling_rate": rate, "decode": true, "_type": "Audio" });
        }
        return json!({ "_type": "Image" });
    }
    hf_feature(field.data_type())
}

/// HuggingFace `datasets` feature description of an Arrow type.
pub fn hf_feature(ty: &DataType) -> Value {
    let dtype = |d: &str| json!({ "dtype": d, "_type": "Value" });
    match ty {
        DataType::Utf8 => dtype("string"),
        DataType::LargeUtf8 => dtype("large_string"),
        DataType::UInt8 => dtype("uint8"),
        DataType::UInt16 => dtype("uint16"),
        DataType::UInt32 => dtype("uint32"),
        DataType::UInt64 => dtype("uint64"),
        DataType::Int8 => dtype("int8"),
        DataType::Int16 => dtype("int16"),
        DataType::Int32 => dtype("int32"),
        DataType::Int64 => dtype("int64"),
        DataType::Float32 => dtype("float32"),
        DataType::Float64 => dtype("float64"),
        DataType::Boolean => dtype("bool"),
        DataType::Binary => dtype("binary"),
        DataType::List(item) => json!({ "feature": hf_feature(item.data_type()), "_type": "List" }),
        DataType::FixedSizeList(item, n) => {
            json!({ "feature": hf_feature(item.data_type()), "length": n, "_type": "List" })
        }
        other => panic!("no datasets feature for {other}"),
    }
}

/// The `features` object of `dataset_info.json`, in column order.
pub fn hf_features(schema: &Schema) -> Value {
    let mut map = serde_json::Map::new();
    for f in schema.fields() {
        map.insert(f.name().clone(), hf_field_feature(f));
    }
    Value::Object(map)
}

/// The schema as written into shards: with the `huggingface` metadata that
/// `datasets` reads features from.
pub fn with_hf_metadata(schema: &SchemaRef) -> SchemaRef {
    let info = json!({ "info": { "features": hf_features(schema) } });
    let mut metadata = schema.metadata().clone();
    metadata.insert("huggingface".into(), info.to_string());
    Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_schema_orders_fields_and_keeps_extras() {
        let produced = Arc::new(Schema::new(vec![
            Field::new("sample_id", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("lang", DataType::Utf8, true),
            Field::new("length", DataType::UInt32, false),
            Field::new(
                "input_ids",
                DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
                false,
            ),
            Field::new("window", DataType::UInt32, false),
        ]));
        let out = TEXT.output_schema(&produced).unwrap();
        let names: Vec<_> = out.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["sample_id", "window", "input_ids", "length", "lang"]
        );
        assert_eq!(
            hf_features(&out)["input_ids"],
            json!({"feature": {"dtype": "uint32", "_type": "Value"}, "_type": "List"})
        );
    }

    #[test]
    fn missing_required_column_is_named() {
        let produced = Arc::new(Schema::new(vec![Field::new(
            "sample_id",
            DataType::Utf8,
            false,
        )]));
        let e = TEXT.output_schema(&produced).unwrap_err();
        assert!(e.contains("window"), "{e}");
    }
}
