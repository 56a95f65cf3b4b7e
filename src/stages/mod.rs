//! Stages: batch in, batch out.
//!
//! A stage's file holds its `Config` (what the pipeline file says, serde
//! with `deny_unknown_fields`), the [`BuildStage`] impl that checks it and
//! builds the stage before any data is read, the stage itself, and its unit
//! tests. A stage declares its output schema from its input schema, then
//! processes batches. A bad record is not an error: the stage calls
//! [`BatchContext::reject`] and leaves the row out of its output; a row
//! dropped on purpose is counted in [`BatchContext::filtered`]. `Err` is
//! for what must stop the run. A stage that must see the input before it
//! runs is built as a [`Fit`]: the engine scans the input once for every
//! fit, then runs the stages they return.
//!
//! Adding a stage: its file (config, build, stage, tests), one line in the
//! `stages!` list below, its fields in `schemas/` if it adds columns to the
//! output.
//!
//! | stage | what it does |
//! |---|---|
//! | `sql` (top-level `sql`) | DataFusion filter/projection over the table `input` |
//! | `augment_text` | synonym and back-translated copies, balanced per label (a fit: label counts); see [`text::augment`] |
//! | `tokenize` | byte-level BPE, `text` to `input_ids` + `length` (a fit when `[stages.train]` trains it) |
//! | `chunk` | sliding windows of `input_ids`, one row per window |
//! | `filter_length` | drops rows whose token count or clip duration is out of bounds, as filtered |
//! | `decode_image`, `resize_image`, `image_features`, `mix`, `encode_image`, `to_tensor` | see [`image`] |
//! | `decode_audio`, `mel_spectrogram`, `spec_augment`, `encode_audio` | see [`audio`] |

pub mod audio;
pub mod columns;
pub mod filter_length;
pub mod image;
pub mod sql;
pub mod text;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::limits::Limits;
use crate::rejects::{Reject, RejectSink};

/// Declares [`StageConfig`], the closed set of stages a pipeline file can
/// name, from one line per stage: the variant, its config type (in the
/// stage's own file, implementing [`BuildStage`]) and its `type` name.
/// Everything that lists the stages (the serde tag, the type names, the
/// per-stage error detail, the build dispatch) comes from this one list.
macro_rules! stages {
    ($($variant:ident($config:ty) = $name:literal,)*) => {
        /// A stage of the pipeline, in the order written; `type = "..."`
        /// picks the variant.
        #[derive(Debug, Clone, Deserialize, Serialize)]
        #[serde(tag = "type")]
        pub enum StageConfig {
            $(#[serde(rename = $name)] $variant($config),)*
        }

        impl StageConfig {
            /// Every `type` a stage table may have.
            pub const TYPES: &[&str] = &[$($name),*];

            pub fn type_name(&self) -> &'static str {
                match self {
                    $(StageConfig::$variant(_) => $name,)*
                }
            }

            /// The stage's own config, to build.
            pub fn config(&self) -> &dyn BuildStage {
                match self {
                    $(StageConfig::$variant(c) => c,)*
                }
            }

            /// Deserialize a stage table (its `type` removed) as the config of
            /// the stage `type_name`: the key path inside the table and the
            /// message of the first error, or `None` when it is valid or the
            /// type is unknown. The tagged enum hides which key failed; this
            /// finds it.
            pub fn table_error(type_name: &str, table: toml::Value) -> Option<(String, String)> {
                fn detail<T: serde::de::DeserializeOwned>(table: toml::Value) -> Option<(String, String)> {
                    let err = serde_path_to_error::deserialize::<_, T>(table).err()?;
                    Some((err.path().to_string(), err.into_inner().message().to_string()))
                }
                match type_name {
                    $($name => detail::<$config>(table),)*
                    _ => None,
                }
            }
        }
    };
}

stages! {
    AugmentText(Box<text::augment::AugmentTextConfig>) = "augment_text",
    Tokenize(text::tokenize::TokenizeConfig) = "tokenize",
    Chunk(text::chunk::ChunkConfig) = "chunk",
    FilterLength(filter_length::FilterLengthConfig) = "filter_length",
    DecodeImage(image::decode::DecodeImageConfig) = "decode_image",
    ResizeImage(image::resize::ResizeImageConfig) = "resize_image",
    ImageFeatures(image::features::ImageFeaturesConfig) = "image_features",
    Mix(image::mix::MixConfig) = "mix",
    EncodeImage(image::encode::EncodeImageConfig) = "encode_image",
    ToTensor(image::tensor::ToTensorConfig) = "to_tensor",
    DecodeAudio(audio::decode::DecodeAudioConfig) = "decode_audio",
    MelSpectrogram(audio::mel::MelSpectrogramConfig) = "mel_spectrogram",
    SpecAugment(audio::specaugment::SpecAugmentConfig) = "spec_augment",
    EncodeAudio(audio::encode::EncodeAudioConfig) = "encode_audio",
}

/// How a stage's config becomes what runs. Implemented by each stage's
/// `Config`, in the stage's own file.
pub trait BuildStage {
    /// Check what needs no data and build the stage; an error names the
    /// key of the stage's table at fault.
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError>;
    /// Whether the stage works on audio: a pipeline with one reads its
    /// folders and tar shards as audio.
    fn is_audio(&self) -> bool {
        false
    }
}

impl<T: BuildStage> BuildStage for Box<T> {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        (**self).build(cx)
    }
    fn is_audio(&self) -> bool {
        (**self).is_audio()
    }
}

/// What a stage is built from besides its config.
pub struct BuildContext<'a> {
    /// The schema of the batches the stage receives.
    pub input: &'a SchemaRef,
    pub limits: &'a Limits,
    /// The stages written before and after this one.
    pub before: &'a [StageConfig],
    pub after: &'a [StageConfig],
    /// Files the stage reads when it is built (a tokenizer, a vocabulary),
    /// by name, with the SHA-256 of their bytes: part of the plan, so that
    /// a changed file is a changed plan.
    pub files: Vec<(&'static str, String)>,
}

impl BuildContext<'_> {
    /// Whether a stage written before this one is `type`.
    pub fn after_a(&self, type_name: &str) -> bool {
        self.before.iter().any(|s| s.type_name() == type_name)
    }
}

/// A built stage.
pub enum Built {
    /// Runs as built.
    Ready(Arc<dyn Stage>),
    /// Must see the input before it runs (a tokenizer trained on it, label
    /// counts): the engine scans the input once for every fit, then runs
    /// what each fit returns.
    Fit(Arc<dyn Fit>),
    /// Run by the stage before it (a resize right after a decode).
    Fused,
}

/// A configuration error: the key of the stage's table at fault (`type`
/// for the stage as a whole) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

impl BuildError {
    pub fn new(key: &str, message: impl std::fmt::Display) -> Self {
        BuildError {
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

impl From<(String, String)> for BuildError {
    fn from((key, message): (String, String)) -> Self {
        BuildError { key, message }
    }
}

/// A stage that must see the input first. The engine reads the input once
/// (the records as the readers make them, after `sql`) and hands every
/// batch to each fit, then runs the stages the fits return.
pub trait Fit: Send + Sync {
    /// The output schema, known before fitting.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef>;
    /// A line for the user about what the scan is for.
    fn describe(&self, cx: &FitContext) -> String;
    /// Whether the records' text is all the fit reads (media files are then
    /// not read).
    fn text_only(&self) -> bool {
        false
    }
    /// The stage an earlier run of the same plan fitted, read back from
    /// the dataset directory (see [`Stage::artifacts`]), if there is one.
    fn resume(&self, _out: &Path) -> Result<Option<Arc<dyn Stage>>> {
        Ok(None)
    }
    /// Read every batch once; the stage that runs.
    fn fit(
        &self,
        batches: &mut (dyn Iterator<Item = RecordBatch> + Send),
        cx: &FitContext,
    ) -> Result<Arc<dyn Stage>>;
}

/// What a fit gets besides the batches.
pub struct FitContext {
    pub threads: usize,
    /// Bytes of input the scan reads.
    pub input_bytes: u64,
}

pub trait Stage: Send + Sync {
    /// The name rejects and logs carry.
    fn name(&self) -> &str;
    /// Checked when the pipeline is built, before any data is read.
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef>;
    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch>;
    /// A line for the run summary (which model ran on which device...).
    fn report(&self) -> Option<String> {
        None
    }
    /// Files the stage writes into the dataset directory (the tokenizer
    /// its ids come from), by name.
    fn artifacts(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(Vec::new())
    }
}

/// What a stage gets besides the batch: the run seed, the reject sink, and
/// counters.
pub struct BatchContext<'a> {
    pub seed: u64,
    pub stage: &'a str,
    pub rejects: &'a mut RejectSink,
    /// Rows dropped on purpose (by a filter), not rejected.
    pub filtered: u64,
}

impl BatchContext<'_> {
    /// Reject row `row` of `batch`, taking its id and provenance from the
    /// batch's `sample_id`, `source` and `position` columns.
    pub fn reject(
        &mut self,
        batch: &RecordBatch,
        row: usize,
        kind: &str,
        message: impl Into<String>,
    ) -> Result<()> {
        let string = |name: &str| {
            batch.column_by_name(name).and_then(|c| {
                let c = c.as_string_opt::<i32>()?;
                (!c.is_null(row)).then(|| c.value(row).to_string())
            })
        };
        let position = batch.column_by_name("position").and_then(|c| {
            let c = c.as_primitive_opt::<arrow::datatypes::UInt64Type>()?;
            (!c.is_null(row)).then(|| c.value(row))
        });
        self.rejects.push(Reject {
            sample_id: string("sample_id").unwrap_or_default(),
            source: string("source"),
            position,
            stage: self.stage.to_string(),
            kind: kind.to_string(),
            message: message.into(),
        })
    }

    /// The seed of a sample's random generator in this stage: a function of
    /// the run seed, the sample id and the stage name only, never of thread,
    /// batch or attempt.
    pub fn sample_seed(&self, sample_id: &str) -> u64 {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(&self.seed.to_le_bytes());
        h.update(self.stage.as_bytes());
        h.update(&[0]);
        h.update(sample_id.as_bytes());
        let d = h.finish();
        u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
    }
}
