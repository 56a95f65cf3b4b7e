//! The dataset as the model sees it: the columns it reads, their classes,
//! and the model's sizes, checked before training starts.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, UInt32Type};

use super::config::{Attention, TrainFile};
use super::loader::Dataset;
use super::model::Dims;
use crate::error::{Error, Result};

/// The columns the model reads, found in the dataset.
#[derive(Debug, Clone)]
pub(super) struct Columns {
    pub(super) text: bool,
    pub(super) image: bool,
    pub(super) pixels: bool,
    pub(super) audio: bool,
    /// The label columns: the task's, and the second task's if any.
    pub(super) labels: Vec<LabelSpec>,
}

impl Columns {
    /// The columns the loader reads: the id (for the split), the inputs,
    /// the labels.
    pub(super) fn names(&self) -> Vec<String> {
        [
            ("sample_id", true),
            ("input_ids", self.text),
            ("image_features", self.image),
            ("pixel_values", self.pixels),
            ("mel", self.audio),
        ]
        .into_iter()
        .filter(|(_, read)| *read)
        .map(|(c, _)| c.to_string())
        .chain(self.labels.iter().map(|l| l.column.clone()))
        .collect()
    }
}

/// A label column and its classes.
#[derive(Debug, Clone)]
pub(super) struct LabelSpec {
    pub(super) column: String,
    /// String labels (text datasets): their names, sorted, are the classes.
    /// `None` for int64 class ids.
    pub(super) names: Option<std::collections::HashMap<String, i64>>,
    pub(super) classes: usize,
}

/// What a label column holds: the column's type, checked.
fn label_type(ds: &Dataset, column: &str) -> Result<DataType> {
    let bad = |m: String| Error::Config(format!("{}: {m}", ds.dir.display()));
    let ty = ds
        .schema
        .field_with_name(column)
        .map_err(|_| {
            bad(format!(
                "the dataset has no `{column}` column: the trainer learns classes"
            ))
        })?
        .data_type()
        .clone();
    if ty != DataType::Int64 && ty != DataType::Utf8 {
        return Err(bad(format!(
            "`{column}` is {ty}: class ids (int64) or names (string) are what the trainer learns"
        )));
    }
    Ok(ty)
}

/// What the scan of a label column saw: the names of string labels, the
/// largest id of int64 ones.
#[derive(Default)]
struct LabelSeen {
    names: std::collections::BTreeSet<String>,
    max: i64,
}

impl LabelSeen {
    fn add(&mut self, column: &dyn Array) {
        match column.data_type() {
            DataType::Utf8 => self.names.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            ),
            _ => {
                let l = column.as_primitive::<Int64Type>();
                self.max = self.max.max(l.iter().flatten().max().unwrap_or(-1));
            }
        }
    }

    /// The classes of `column`.
    fn spec(self, ds: &Dataset, column: &str, ty: &DataType) -> Result<LabelSpec> {
        if *ty == DataType::Utf8 {
            if self.names.len() < 2 {
                return Err(Error::Config(format!(
                    "{}: `{column}` has {} distinct value(s): nothing to classify",
                    ds.dir.display(),
                    self.names.len()
                )));
            }
            return Ok(LabelSpec {
                column: column.to_string(),
                classes: self.names.len(),
                names: Some(
                    self.names
                        .into_iter()
                        .enumerate()
                        .map(|(i, n)| (n, i as i64))
                        .collect(),
                ),
            });
        }
        // Class names a media dataset declares (ClassLabel), else the ids seen.
        let declared = ds
            .schema
            .field_with_name(column)
            .ok()
            .and_then(|f| f.metadata().get(crate::schema::CLASS_NAMES).cloned())
            .and_then(|n| serde_json::from_str::<Vec<String>>(&n).ok());
        Ok(LabelSpec {
            column: column.to_string(),
            names: None,
            classes: declared.map_or((self.max + 1).max(2) as usize, |n| n.len()),
        })
    }
}

/// The model's sizes, checked against the dataset before training starts.
pub(super) fn dims(file: &TrainFile, ds: &Dataset) -> Result<(Dims, Columns)> {
    let has = |n: &str| {
        ds.schema
            .field_with_name(n)
            .ok()
            .map(|f| f.data_type().clone())
    };
    let bad = |m: String| Error::Config(format!("{}: {m}", ds.dir.display()));
    let label_columns: Vec<(String, DataType)> = std::iter::once(&file.data.label)
        .chain(&file.data.second_label)
        .map(|c| Ok((c.clone(), label_type(ds, c)?)))
        .collect::<Result<_>>()?;
    let image = match has("image_features") {
        Some(DataType::FixedSizeList(_, n)) => n as usize,
        Some(t) => {
            return Err(bad(format!(
                "`image_features` is {t}, not fixed_list<float32>"
            )));
        }
        None => 0,
    };
    let pixels = match has("pixel_values") {
        None => [0, 0],
        Some(t) => pixel_shape(&t).ok_or_else(|| {
            bad(format!(
                "`pixel_values` is {t}, not a [3][height][width] float32 tensor"
            ))
        })?,
    };
    let (text, audio) = (has("input_ids").is_some(), has("mel").is_some());
    if !text && image == 0 && pixels[0] == 0 && !audio {
        return Err(bad(
            "the dataset has none of `input_ids`, `image_features`, `pixel_values`, `mel` for the model to read"
                .into(),
        ));
    }
    let patch = file.model.patch;
    if pixels[0] > 0 && (patch == 0 || patch > pixels[0].min(pixels[1])) {
        return Err(Error::Config(format!(
            "model.patch = {patch}: patches of pixel_values ({} x {}) must be at least 1 and at most its shorter side",
            pixels[0], pixels[1]
        )));
    }
    if file.mix.is_some() && pixels[0] == 0 {
        return Err(bad(
            "[mix] mixes `pixel_values`, which this dataset does not have: store the images with the `to_tensor` stage".into(),
        ));
    }
    if ds.rows == 0 {
        return Err(bad("the dataset is empty".into()));
    }
    // One pass for what the schema does not say: the classes, the largest
    // token id, the mel bands.
    let (mut max_id, mut mels) = (0u32, 0usize);
    let mut seen: Vec<LabelSeen> = label_columns.iter().map(|_| LabelSeen::default()).collect();
    let mut names: Vec<&str> = label_columns.iter().map(|(c, _)| c.as_str()).collect();
    if text {
        names.push("input_ids");
    }
    if audio {
        names.push("mel");
    }
    let projection = names
        .iter()
        .map(|n| ds.schema.index_of(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for i in 0..ds.shards.len() {
        let b = ds.read_shard(i, Some(&projection))?;
        for (j, s) in seen.iter_mut().enumerate() {
            s.add(b.column(j).as_ref());
        }
        if text {
            let ids = b.column(label_columns.len()).as_list::<i32>();
            max_id = max_id.max(
                ids.values()
                    .as_primitive::<UInt32Type>()
                    .values()
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(0),
            );
        }
        if audio {
            let mel = b.column(projection.len() - 1).as_list::<i32>();
            if mel.len() > 0 {
                mels = mel.value(0).len();
            }
        }
    }
    let labels = seen
        .into_iter()
        .zip(&label_columns)
        .map(|(s, (c, ty))| s.spec(ds, c, ty))
        .collect::<Result<Vec<_>>>()?;
    let columns = Columns {
        text,
        image: image > 0,
        pixels: pixels[0] > 0,
        audio,
        labels,
    };
    let vocab = match (columns.text, file.data.vocab_size) {
        (false, _) => 0,
        (true, Some(v)) if (max_id as usize) < v => v,
        (true, Some(v)) => {
            return Err(Error::Config(format!(
                "data.vocab_size = {v}, but the dataset has token id {max_id}: it was tokenized with a larger vocabulary"
            )));
        }
        (true, None) => max_id as usize + 1,
    };
    Ok((
        Dims {
            vocab,
            max_tokens: file.data.max_tokens.max(1),
            image,
            mels,
            pixels,
            patch: if pixels[0] > 0 { patch } else { 0 },
            classes: columns.labels[0].classes,
            classes2: columns.labels.get(1).map_or(0, |l| l.classes),
            d_model: file.model.d_model,
            heads: file.model.heads,
            window: match file.model.attention {
                Attention::Full => 0,
                Attention::Sliding => file.model.window,
            },
            memory: 0,
            qk: 0,
            v: 0,
        },
        columns,
    ))
}

/// `[3][height][width]` float32 lists: the height and width.
fn pixel_shape(t: &DataType) -> Option<[usize; 2]> {
    let DataType::FixedSizeList(rows, 3) = t else {
        return None;
    };
    let DataType::FixedSizeList(cols, h) = rows.data_type() else {
        return None;
    };
    let DataType::FixedSizeList(item, w) = cols.data_type() else {
        return None;
    };
    (item.data_type() == &DataType::Float32).then_some([*h as usize, *w as usize])
}
