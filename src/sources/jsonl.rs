//! JSON Lines: one object per line, the document in a named string field.

use std::borrow::Cow;
use std::fmt;

use arrow::array::RecordBatch;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::text::Lines;
use super::{InputSpec, ReadOptions, RecordBuilder, SourceReader, Split};
use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::{RejectSink, Rejection};
use crate::sources::input::InputFormat;

pub struct JsonlReader {
    lines: Lines,
    text_field: String,
    columns: Vec<String>,
    limits: Limits,
    batch_rows: usize,
    builder: RecordBuilder,
}

impl JsonlReader {
    pub fn new(
        split: &Split,
        spec: &InputSpec,
        opts: &ReadOptions,
        builder: RecordBuilder,
    ) -> Self {
        JsonlReader {
            lines: Lines::new(split, InputFormat::Jsonl, opts.limits.max_line_bytes),
            text_field: spec.text_field.clone(),
            columns: spec.columns.clone(),
            limits: opts.limits.clone(),
            batch_rows: opts.batch_rows,
            builder,
        }
    }
}

impl SourceReader for JsonlReader {
    fn next_batch(&mut self, rejects: &mut RejectSink) -> Result<Option<RecordBatch>> {
        let mut extras: Vec<Option<String>> = vec![None; self.columns.len()];
        while let Some((pos, line)) = self.lines.next(rejects)? {
            let doc = extract(line, &self.text_field, &self.columns, &mut extras)
                .and_then(|doc| super::check_document(&doc, &self.limits).map(|_| doc));
            match doc {
                Ok(doc) => {
                    let ex: Vec<Option<&str>> = extras.iter().map(|e| e.as_deref()).collect();
                    self.builder.push(pos, &doc, &ex);
                }
                Err((kind, msg)) => {
                    let path = self.lines.name();
                    rejects.push(super::reject(InputFormat::Jsonl, path, pos, kind, msg))?;
                }
            }
            if self.builder.is_full(self.batch_rows) {
                break;
            }
        }
        self.builder.finish()
    }
}

/// Pull the text field and the extra columns out of one JSON object, skipping
/// every other value without building it.
pub fn extract<'a>(
    line: &'a str,
    text_field: &str,
    columns: &[String],
    extras: &mut [Option<String>],
) -> std::result::Result<Cow<'a, str>, Rejection> {
    extras.iter_mut().for_each(|e| *e = None);
    let mut de = serde_json::Deserializer::from_str(line);
    let found = Extract {
        text_field,
        columns,
        extras,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|_| v))
    .map_err(|e| {
        if e.is_data() && e.to_string().starts_with("not an object") {
            (
                "not_an_object",
                "the line is JSON but not an object".to_string(),
            )
        } else {
            ("invalid_json", format!("invalid JSON: {e}"))
        }
    })?;
    match found {
        Some(TextValue::Text(t)) => Ok(t),
        Some(TextValue::Null) => Err(("missing_field", format!("field `{text_field}` is null"))),
        Some(TextValue::Other(what)) => Err((
            "wrong_type",
            format!("field `{text_field}` is {what}, expected a string"),
        )),
        None => Err((
            "missing_field",
            format!("no field `{text_field}` in the object"),
        )),
    }
}

struct Extract<'c> {
    text_field: &'c str,
    columns: &'c [String],
    extras: &'c mut [Option<String>],
}

enum TextValue<'de> {
    Text(Cow<'de, str>),
    Null,
    Other(&'static str),
}

impl<'de> DeserializeSeed<'de> for Extract<'_> {
    type Value = Option<TextValue<'de>>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Extract<'_> {
    type Value = Option<TextValue<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut text = None;
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            if key.0 == self.text_field {
                text = Some(map.next_value::<TextValueSeed>()?.0);
            } else if let Some(i) = self.columns.iter().position(|c| *c == key.0) {
                let raw: &RawValue = map.next_value()?;
                let raw = raw.get();
                self.extras[i] = if raw == "null" {
                    None
                } else if raw.starts_with('"') {
                    Some(serde_json::from_str::<String>(raw).map_err(de::Error::custom)?)
                } else {
                    Some(raw.to_string())
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(text)
    }
    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Err(de::Error::custom("not an object"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
}

/// A string that borrows from the input when it has no escapes.
struct CowStr<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The text field's value: a string, null, or the name of what it was.
struct TextValueSeed<'de>(TextValue<'de>);

impl<'de> de::Deserialize<'de> for TextValueSeed<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextValueSeed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(TextValueSeed(TextValue::Text(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(TextValueSeed(TextValue::Text(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(TextValueSeed(TextValue::Text(Cow::Owned(v))))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
                Ok(TextValueSeed(TextValue::Null))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(TextValueSeed(TextValue::Other("a boolean")))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
                Ok(TextValueSeed(TextValue::Other("a number")))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
                Ok(TextValueSeed(TextValue::Other("a number")))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
                Ok(TextValueSeed(TextValue::Other("a number")))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TextValueSeed(TextValue::Other("an array")))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TextValueSeed(TextValue::Other("an object")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> std::result::Result<(String, Vec<Option<String>>), &'static str> {
        let cols = vec!["lang".to_string(), "score".to_string()];
        let mut extras = vec![None, None];
        extract(line, "text", &cols, &mut extras)
            .map(|t| (t.into_owned(), extras.clone()))
            .map_err(|(k, _)| k)
    }

    #[test]
    fn extracts_text_and_columns() {
        let (t, ex) = run(r#"{"id": 1, "text": "caf\u00e9 \"x\"", "lang": "fr", "score": 0.5, "nested": {"a": [1,2]}}"#).unwrap();
        assert_eq!(t, "café \"x\"");
        assert_eq!(ex, vec![Some("fr".to_string()), Some("0.5".to_string())]);
    }

    #[test]
    fn classifies_bad_lines() {
        assert_eq!(run(r#"{"text": "a""#), Err("invalid_json"));
        assert_eq!(run(r#"[1, 2]"#), Err("not_an_object"));
        assert_eq!(run(r#""text""#), Err("not_an_object"));
        assert_eq!(run(r#"{"body": "a"}"#), Err("missing_field"));
        assert_eq!(run(r#"{"text": null}"#), Err("missing_field"));
        assert_eq!(run(r#"{"text": 3}"#), Err("wrong_type"));
        assert_eq!(run(r#"{"text": "a"} trailing"#), Err("invalid_json"));
    }
}
