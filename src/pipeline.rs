//! A pipeline built from its file: inputs resolved to files, stages built and
//! their schemas chained, the output schema checked against `schemas/`. All
//! of it happens before any data is read, and every failure names the file,
//! the key and the line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use tokenizers::Tokenizer;

use crate::config::{
    ConfigSource, InputFormat, LabelSource, Overrides, PipelineConfig, StageConfig, TokenizeConfig,
    TrainConfig,
};
use crate::error::Result;
use crate::schema::{self, KindSchema};
use crate::sources::media::{
    AlsoFile, Media, MediaSpec, folder_classes, media_record_schema, walk_media,
};
use crate::sources::{self, InputSpec, ReadOptions};
use crate::stages::Stage;
use crate::stages::audio::decode::DecodeAudioStage;
use crate::stages::audio::encode::EncodeAudioStage;
use crate::stages::audio::mel::MelStage;
use crate::stages::audio::specaugment::SpecAugmentStage;
use crate::stages::image::decode::{DecodeStage, ResizeStage, check_resize};
use crate::stages::image::encode::{EncodeStage, TensorStage};
use crate::stages::image::features::FeaturesStage;
use crate::stages::image::mix::MixStage;
use crate::stages::sql::SqlStage;
use crate::stages::text::augment::{self, AugmentTextStage};
use crate::stages::text::chunk::ChunkStage;
use crate::stages::text::tokenize::{self, TokenizeStage};

/// An input with its files, sorted.
#[derive(Debug, Clone)]
pub struct ResolvedInput {
    pub spec: InputSpec,
    pub files: Vec<String>,
}

/// Where the tokenizer comes from.
#[derive(Debug, Clone)]
pub enum TokenizerSource {
    /// A `tokenizer.json` and the SHA-256 of its bytes.
    File { path: PathBuf, sha256: String },
    /// Trained on the pipeline's corpus.
    Train(TrainConfig),
}

/// Decoded bytes a batch of full-size images may claim.
const PIXEL_BUDGET: u64 = 256 << 20;
/// Decoded bytes (float32 samples) a batch of audio clips may claim.
const AUDIO_BUDGET: u64 = 128 << 20;

/// A stage as built: ready to run, or waiting for the tokenizer (which may
/// have to be trained first).
enum BuiltStage {
    Ready(Arc<dyn Stage>),
    Tokenize(TokenizeConfig),
    /// Waiting for the input's label counts (`[stages.balance]`).
    Balance(Arc<AugmentTextStage>),
}

pub struct Pipeline {
    pub source: ConfigSource,
    /// The dataset kind: what `schemas/` promises about the output.
    pub kind: &'static KindSchema,
    /// Class names of the `label` column, in id order (media datasets).
    pub classes: Vec<String>,
    /// What the records carry besides text: images or audio.
    pub media: Option<Media>,
    /// Multimodal records: the second file each carries (audio).
    pub also: Option<Media>,
    built: Vec<BuiltStage>,
    /// A decode not followed by a resize keeps full-size pixels: image
    /// batches are then cut by the pixels their headers claim.
    keeps_full_pixels: bool,
    pub config: PipelineConfig,
    pub inputs: Vec<ResolvedInput>,
    /// What the readers produce.
    pub record_schema: SchemaRef,
    /// What the shards hold.
    pub dataset_schema: SchemaRef,
    pub sql: Option<Arc<SqlStage>>,
    /// The tokenize stage's config and where its tokenizer comes from.
    pub tokenize: Option<(TokenizeConfig, TokenizerSource)>,
    /// Terms added to the tokenizer, and the hash of the file they came from.
    pub domain_vocab: Option<(Vec<String>, String)>,
}

impl Pipeline {
    /// Parse, apply command-line overrides and build; reads no data.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Pipeline> {
        let source = ConfigSource::read(path)?;
        let mut config = source.parse()?;
        overrides.apply(&source, &mut config)?;
        Self::build(source, config)
    }

    pub fn build(source: ConfigSource, config: PipelineConfig) -> Result<Pipeline> {
        if config.inputs.is_empty() {
            return Err(source.error("inputs", "the pipeline has no [[inputs]]"));
        }
        let mut inputs = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        // Folders and tar shards are audio when an audio stage reads them.
        let audio_stages = config.stages.iter().any(StageConfig::is_audio);
        // The media of the pipeline, and the input that decided it.
        let mut pipeline_media: Option<(Option<Media>, Option<Media>, usize)> = None;
        let (mut has_label, mut has_caption) = (false, false);
        let mut classes: Option<(Vec<String>, usize)> = None;
        for (i, input) in config.inputs.iter().enumerate() {
            let key = |k: &str| format!("inputs[{i}].{k}");
            let format = match input
                .format
                .or_else(|| match Path::new(&input.path).is_dir() {
                    true if audio_stages => Some(InputFormat::Audio),
                    true => Some(InputFormat::Images),
                    false => InputFormat::from_path(&input.path),
                }) {
                Some(f) => f,
                None => {
                    return Err(source.error(
                        &key("format"),
                        format!("cannot tell the format of `{}`; set format = \"jsonl\" | \"text\" | \"csv\" | \"parquet\" | \"images\" | \"audio\" | \"tar\"", input.path),
                    ));
                }
            };
            if input.delimiter.len() != 1 {
                return Err(source.error(&key("delimiter"), "the delimiter must be a single byte"));
            }
            for (k, set) in [
                ("image_column", input.image_column.is_some()),
                ("audio_column", input.audio_column.is_some()),
            ] {
                if set && !format.is_table() {
                    return Err(
                        source.error(&key(k), format!("{k} is for tables (jsonl, csv, parquet)"))
                    );
                }
            }
            // A row may name an image and an audio file (multimodal
            // records): the image is the record's first file.
            let both = input.image_column.is_some() && input.audio_column.is_some();
            if both && input.image_column == input.audio_column {
                return Err(source.error(
                    &key("audio_column"),
                    "image_column and audio_column name the same column",
                ));
            }
            let file_column = input.image_column.clone().or(input.audio_column.clone());
            let also_column = both.then(|| input.audio_column.clone()).flatten();
            for (k, set) in [
                ("caption_column", input.caption_column.is_some()),
                ("label_column", input.label_column.is_some()),
            ] {
                if set && file_column.is_none() {
                    return Err(
                        source.error(&key(k), format!("{k} needs image_column or audio_column"))
                    );
                }
            }
            for (k, set, needs) in [
                (
                    "image_root",
                    input.image_root.is_some(),
                    input.image_column.is_some(),
                ),
                (
                    "audio_root",
                    input.audio_root.is_some(),
                    input.audio_column.is_some(),
                ),
            ] {
                if set && !needs {
                    let column = k.replace("_root", "_column");
                    return Err(source.error(&key(k), format!("{k} needs {column}")));
                }
            }
            let media = match format {
                InputFormat::Images => Some(Media::Image),
                InputFormat::Audio => Some(Media::Audio),
                InputFormat::Tar if audio_stages => Some(Media::Audio),
                InputFormat::Tar => Some(Media::Image),
                _ if input.image_column.is_some() => Some(Media::Image),
                _ if input.audio_column.is_some() => Some(Media::Audio),
                _ => None,
            };
            let also = also_column.as_ref().map(|_| Media::Audio);
            match pipeline_media {
                Some((other, other_also, j)) if (other, other_also) != (media, also) => {
                    let name = |m: Option<Media>, a: Option<Media>| match a {
                        Some(_) => "image and audio",
                        None => m.map_or("text", Media::name),
                    };
                    return Err(source.error(
                        &key("path"),
                        format!(
                            "this input is {} and inputs[{j}] is {}: a pipeline reads one kind of input (text, images or audio)",
                            name(media, also),
                            name(other, other_also)
                        ),
                    ));
                }
                Some(_) => {}
                None => pipeline_media = Some((media, also, i)),
            }
            // Table columns are read beside the reader's own ones.
            let own = |c: &Option<String>| {
                c.as_deref()
                    .is_some_and(|c| sources::media::TABLE_OWN_COLUMNS.contains(&c))
            };
            if own(&input.label_column) {
                return Err(source.error(
                    &key("label_column"),
                    "this name is a column kiln fills itself; rename the table's column",
                ));
            }
            if own(&input.caption_column) && own(&file_column) {
                let k = match input.image_column.is_some() {
                    true => "image_column",
                    false => "audio_column",
                };
                return Err(source.error(
                    &key(k),
                    "the caption and the file path cannot both be in columns named like the ones kiln fills",
                ));
            }
            for (j, c) in input.columns.iter().enumerate() {
                if input.columns[..j].contains(c) {
                    return Err(source.error(&key("columns"), format!("`{c}` is listed twice")));
                }
                let own = if media.is_some() {
                    matches!(
                        c.as_str(),
                        "sample_id" | "source" | "position" | "path" | "label" | "text"
                    ) || Some(c) == file_column.as_ref()
                        || Some(c) == also_column.as_ref()
                        || also.is_some_and(|m| c == m.path_column())
                        || Some(c) == input.caption_column.as_ref()
                        || Some(c) == input.label_column.as_ref()
                } else {
                    matches!(c.as_str(), "sample_id" | "source" | "position" | "text")
                        || *c == input.text_field
                };
                if own {
                    return Err(source.error(
                        &key("columns"),
                        format!("`{c}` is a column kiln fills itself"),
                    ));
                }
                if !columns.contains(c) {
                    columns.push(c.clone());
                }
            }
            let walked = format.is_media_files() && Path::new(&input.path).is_dir();
            let files = match (walked, media) {
                (true, Some(m)) => match walk_media(Path::new(&input.path), m) {
                    Ok(f) if f.is_empty() => {
                        return Err(source.error(
                            &key("path"),
                            format!(
                                "no {} files ({}) under `{}`",
                                m.name(),
                                m.extensions().join(", "),
                                input.path
                            ),
                        ));
                    }
                    Ok(f) => f,
                    Err(e) => {
                        return Err(source
                            .error(&key("path"), format!("cannot list `{}`: {e}", input.path)));
                    }
                },
                _ => expand(&input.path).map_err(|m| source.error(&key("path"), m))?,
            };
            let mut spec = InputSpec::from_config(input, format);
            if let Some(media) = media {
                let labels = if format.is_media_files() {
                    input.labels
                } else {
                    LabelSource::None
                };
                let names = match (&input.classes, labels) {
                    (Some(c), _) => c.clone(),
                    (None, LabelSource::Folder) => {
                        let names = folder_classes(&files);
                        if files
                            .iter()
                            .any(|f| sources::media::folder_label(f).is_none())
                        {
                            return Err(source.error(
                                &key("labels"),
                                format!("some {} files are in no folder to name their class; set labels = \"none\" or use a folder per class", media.name()),
                            ));
                        }
                        names
                    }
                    (None, LabelSource::None) => Vec::new(),
                };
                if !names.is_empty() {
                    match &classes {
                        Some((known, j)) if *known != names => {
                            return Err(source.error(
                                &key("classes"),
                                format!("the classes {names:?} differ from those of inputs[{j}], {known:?}: one dataset has one list of class names"),
                            ));
                        }
                        Some(_) => {}
                        None => classes = Some((names, i)),
                    }
                }
                has_label |= labels == LabelSource::Folder
                    || format == InputFormat::Tar
                    || input.label_column.is_some();
                has_caption |= format == InputFormat::Tar || input.caption_column.is_some();
                let table_dir = Path::new(files.first().map(String::as_str).unwrap_or("."))
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let root = match input.image_root.as_ref().or(input.audio_root.as_ref()) {
                    Some(r) => PathBuf::from(r),
                    None => table_dir.clone(),
                };
                spec.media = Some(MediaSpec {
                    media,
                    labels,
                    file_column,
                    root,
                    caption_column: input.caption_column.clone(),
                    label_column: input.label_column.clone(),
                    classes: Arc::new(Vec::new()),
                    also: also_column.map(|column| AlsoFile {
                        media: Media::Audio,
                        column,
                        root: input.audio_root.as_ref().map_or(table_dir, PathBuf::from),
                    }),
                });
            }
            inputs.push(ResolvedInput { spec, files });
        }
        let media = pipeline_media.and_then(|(m, _, _)| m);
        let also = pipeline_media.and_then(|(_, a, _)| a);
        if audio_stages && media != Some(Media::Audio) && also != Some(Media::Audio) {
            let i = config
                .stages
                .iter()
                .position(StageConfig::is_audio)
                .expect("there is one");
            return Err(source.error(
                &format!("stages[{i}].type"),
                "audio stages need audio inputs (audio files, tar shards, tables with audio_column)",
            ));
        }
        let classes = classes.map(|(c, _)| c).unwrap_or_default();
        let shared = Arc::new(classes.clone());
        for input in &mut inputs {
            if let Some(m) = &mut input.spec.media {
                m.classes = shared.clone();
            }
        }
        let kind: &'static KindSchema = match media {
            Some(_) if also.is_some() => &schema::MULTIMODAL,
            Some(Media::Image) => &schema::IMAGE,
            Some(Media::Audio) => &schema::AUDIO,
            None => &schema::TEXT,
        };
        let record_schema = match media {
            Some(m) => {
                let s = media_record_schema(m, also, &columns, has_label, has_caption);
                with_class_names(&s, &classes)
            }
            None => sources::record_schema(&columns),
        };

        let mut schema = record_schema.clone();
        let sql = match &config.sql {
            Some(query) => {
                let stage = SqlStage::new(query, &schema, &["sample_id"])
                    .map_err(|m| source.error("sql", m))?;
                schema = stage.output_schema(&schema)?;
                Some(Arc::new(stage))
            }
            None => None,
        };

        let mut tokenize = None;
        let mut domain_vocab = None;
        let mut built_stages: Vec<BuiltStage> = Vec::new();
        let mut fused_resize = false;
        let mut keeps_full_pixels = false;
        for (i, stage) in config.stages.iter().enumerate() {
            let key = |k: &str| format!("stages[{i}].{k}");
            if std::mem::take(&mut fused_resize) {
                // Run by the decode stage before it.
                continue;
            }
            let keyed = |(k, m): (String, String)| source.error(&key(&k), m);
            let built: Arc<dyn Stage> = match stage {
                StageConfig::Tokenize(t) => {
                    if tokenize.is_some() {
                        return Err(
                            source.error(&key("type"), "only one tokenize stage is allowed")
                        );
                    }
                    let from = match (&t.tokenizer, &t.train) {
                        (Some(_), Some(_)) => {
                            return Err(source.error(
                                &key("tokenizer"),
                                "set either `tokenizer` or [stages.train], not both",
                            ));
                        }
                        (None, None) => {
                            return Err(source.error(&key("type"), "set `tokenizer = \"path/tokenizer.json\"` or a [stages.train] table"));
                        }
                        (Some(path), None) => {
                            let bytes = std::fs::read(path).map_err(|e| {
                                source.error(&key("tokenizer"), format!("cannot read {path}: {e}"))
                            })?;
                            let tok = tokenize::load(Path::new(path))
                                .map_err(|e| source.error(&key("tokenizer"), e))?;
                            if let tokenizers::ModelWrapper::BPE(bpe) = tok.get_model()
                                && bpe.dropout.is_some()
                            {
                                return Err(source.error(
                                    &key("tokenizer"),
                                    format!("{path} sets BPE dropout, which makes ids random; kiln's output must be a function of the input and the seed: remove \"dropout\" from it"),
                                ));
                            }
                            TokenizerSource::File {
                                path: PathBuf::from(path),
                                sha256: crate::sinks::sha256_hex(&bytes),
                            }
                        }
                        (None, Some(train)) => {
                            if train.vocab_size < 257 {
                                return Err(source.error(
                                    &key("train.vocab_size"),
                                    "vocab_size must be at least 257 (the byte alphabet)",
                                ));
                            }
                            TokenizerSource::Train(train.clone())
                        }
                    };
                    if let Some(path) = &t.domain_vocab {
                        let bytes = std::fs::read(path).map_err(|e| {
                            source.error(&key("domain_vocab"), format!("cannot read {path}: {e}"))
                        })?;
                        let terms = tokenize::read_domain_vocab(Path::new(path)).map_err(|e| {
                            source.error(&key("domain_vocab"), format!("cannot read {path}: {e}"))
                        })?;
                        domain_vocab = Some((terms, crate::sinks::sha256_hex(&bytes)));
                    }
                    tokenize = Some((t.clone(), from));
                    let placeholder = TokenizeStage::new(
                        t,
                        Arc::new(Tokenizer::new(tokenizers::models::bpe::BPE::default())),
                    );
                    schema = placeholder
                        .output_schema(&schema)
                        .map_err(|e| source.error(&key("type"), e))?;
                    built_stages.push(BuiltStage::Tokenize(t.clone()));
                    continue;
                }
                StageConfig::Chunk(c) => {
                    Arc::new(ChunkStage::new(c).map_err(|m| source.error(&key("max_tokens"), m))?)
                }
                StageConfig::DecodeImage(_) => {
                    let resize = match config.stages.get(i + 1) {
                        Some(StageConfig::ResizeImage(r)) => {
                            check_resize(r)
                                .map_err(|m| source.error(&format!("stages[{}].size", i + 1), m))?;
                            fused_resize = true;
                            Some(r.clone())
                        }
                        _ => None,
                    };
                    keeps_full_pixels |= resize.is_none();
                    Arc::new(DecodeStage::new(config.limits.max_image_pixels, resize))
                }
                StageConfig::ResizeImage(r) => {
                    check_resize(r).map_err(|m| source.error(&key("size"), m))?;
                    Arc::new(ResizeStage::new(r.clone(), config.limits.max_image_pixels))
                }
                StageConfig::ImageFeatures(f) => {
                    Arc::new(FeaturesStage::build(f, &schema).map_err(keyed)?)
                }
                StageConfig::Mix(m) => Arc::new(MixStage::build(m, &schema).map_err(keyed)?),
                StageConfig::EncodeImage(e) => {
                    Arc::new(EncodeStage::new(e).map_err(|m| source.error(&key("quality"), m))?)
                }
                StageConfig::ToTensor(t) => Arc::new(
                    TensorStage::build(t, &schema).map_err(|e| source.error(&key("type"), e))?,
                ),
                StageConfig::DecodeAudio(d) => Arc::new(
                    DecodeAudioStage::new(d, config.limits.max_audio_seconds).map_err(keyed)?,
                ),
                StageConfig::MelSpectrogram(m) => {
                    Arc::new(MelStage::build(m, &schema).map_err(keyed)?)
                }
                StageConfig::SpecAugment(a) => Arc::new(SpecAugmentStage::build(a).map_err(keyed)?),
                StageConfig::EncodeAudio(e) => Arc::new(EncodeAudioStage::new(e)),
                StageConfig::AugmentText(a) => {
                    if config.stages[..i]
                        .iter()
                        .any(|s| matches!(s, StageConfig::Tokenize(_)))
                    {
                        return Err(source.error(
                            &key("type"),
                            "augment_text works on text: put it before the tokenize stage",
                        ));
                    }
                    let stage = Arc::new(augment::build(a).map_err(keyed)?);
                    if stage.balance().is_some() {
                        schema = stage
                            .output_schema(&schema)
                            .map_err(|e| source.error(&key("balance.label_column"), e))?;
                        built_stages.push(BuiltStage::Balance(stage));
                        continue;
                    }
                    stage
                }
            };
            schema = built
                .output_schema(&schema)
                .map_err(|e| source.error(&key("type"), e))?;
            built_stages.push(BuiltStage::Ready(built));
        }
        let dataset_schema = kind.output_schema(&schema).map_err(|m| {
            source.error(
                "stages",
                format!("the output does not fit schemas/{}.json: {m}", kind.kind),
            )
        })?;
        Ok(Pipeline {
            source,
            kind,
            classes,
            media,
            also,
            built: built_stages,
            keeps_full_pixels,
            config,
            inputs,
            record_schema,
            dataset_schema,
            sql,
            tokenize,
            domain_vocab,
        })
    }

    /// The label column whose counts over the whole input a stage needs
    /// before the tasks run (`[stages.balance]`).
    pub fn balance_column(&self) -> Option<&str> {
        self.built.iter().find_map(|s| match s {
            BuiltStage::Balance(b) => b.balance().map(|b| b.label_column.as_str()),
            _ => None,
        })
    }

    /// The stages that run on every batch, in order, given the tokenizer
    /// and the label counts.
    pub fn stages(
        &self,
        tokenizer: Option<Arc<Tokenizer>>,
        label_counts: Option<&HashMap<String, u64>>,
    ) -> Vec<Arc<dyn Stage>> {
        let mut out: Vec<Arc<dyn Stage>> = Vec::new();
        if let Some(sql) = &self.sql {
            out.push(sql.clone());
        }
        for stage in &self.built {
            match stage {
                BuiltStage::Tokenize(t) => {
                    let tok = tokenizer
                        .clone()
                        .expect("a pipeline with a tokenize stage is run with its tokenizer");
                    out.push(Arc::new(TokenizeStage::new(t, tok)));
                }
                BuiltStage::Ready(s) => out.push(s.clone()),
                BuiltStage::Balance(s) => {
                    let counts = label_counts
                        .expect("a pipeline with [stages.balance] is run with its label counts");
                    out.push(Arc::new(s.with_counts(counts)));
                }
            }
        }
        out
    }

    /// Lines for the run summary from the stages (which model ran where).
    pub fn reports(&self) -> Vec<String> {
        self.built
            .iter()
            .filter_map(|s| match s {
                BuiltStage::Ready(s) => s.report(),
                BuiltStage::Tokenize(_) | BuiltStage::Balance(_) => None,
            })
            .collect()
    }

    /// What the readers need besides a split.
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            schema: self.record_schema.clone(),
            limits: self.config.limits.clone(),
            batch_rows: self.config.plan.batch_rows.max(1),
            decoded_budget: match self.media {
                // Multimodal: the audio's claims and the images', together.
                Some(_) if self.also.is_some() => Some(AUDIO_BUDGET),
                Some(Media::Image) => self.keeps_full_pixels.then_some(PIXEL_BUDGET),
                Some(Media::Audio) => Some(AUDIO_BUDGET),
                None => None,
            },
            resample_to: self.config.stages.iter().find_map(|s| match s {
                StageConfig::DecodeAudio(d) => d.sample_rate,
                _ => None,
            }),
            captions_only: false,
        }
    }

    /// The text column the tokenizer reads.
    pub fn text_column(&self) -> &str {
        self.tokenize
            .as_ref()
            .map(|(t, _)| t.text_column.as_str())
            .unwrap_or("text")
    }
}

/// The schema with the class names on its `label` field.
fn with_class_names(schema: &SchemaRef, classes: &[String]) -> SchemaRef {
    if classes.is_empty() {
        return schema.clone();
    }
    let names = serde_json::to_string(classes).expect("strings serialize");
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let f = f.as_ref().clone();
            if f.name() == "label" {
                f.with_metadata([(schema::CLASS_NAMES.to_string(), names.clone())].into())
            } else {
                f
            }
        })
        .collect();
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// Files a path or glob names, sorted; an error message when none.
fn expand(pattern: &str) -> std::result::Result<Vec<String>, String> {
    let is_glob = pattern.contains(['*', '?', '[']);
    if !is_glob {
        let p = Path::new(pattern);
        if p.is_dir() {
            return Err(format!(
                "`{pattern}` is a directory; name its files with a glob such as `{pattern}/*.jsonl`"
            ));
        }
        if !p.exists() {
            return Err(format!("no such file: `{pattern}`"));
        }
        return Ok(vec![pattern.to_string()]);
    }
    let paths = glob::glob(pattern).map_err(|e| format!("invalid glob `{pattern}`: {e}"))?;
    let mut files: Vec<String> = paths
        .filter_map(|p| p.ok())
        .filter(|p| !p.is_dir())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(format!("`{pattern}` matches no files"));
    }
    Ok(files)
}
