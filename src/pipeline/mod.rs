//! A pipeline built from its file: inputs resolved to files ([`inputs`]),
//! stages built and their schemas chained, the output schema checked
//! against `schemas/`. All of it happens before any data is read, and every
//! failure names the file, the key and the line.

pub mod inputs;

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::config::{ConfigSource, Overrides, PipelineConfig};
use crate::error::Result;
use crate::schema::KindSchema;
use crate::sources::ReadOptions;
use crate::sources::media::Media;
use crate::stages::sql::Sql;
use crate::stages::{BuildContext, Built, Fit, Stage, StageConfig};
pub use inputs::ResolvedInput;

/// Decoded bytes a batch of full-size images may claim.
const PIXEL_BUDGET: u64 = 256 << 20;
/// Decoded bytes (float32 samples) a batch of audio clips may claim.
const AUDIO_BUDGET: u64 = 128 << 20;

/// A stage as the pipeline holds it: ready, or to be fitted on the input
/// first.
#[derive(Clone)]
pub enum Planned {
    Ready(Arc<dyn Stage>),
    Fit(Arc<dyn Fit>),
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
    /// The stages after `sql`, in order.
    pub stages: Vec<Planned>,
    pub config: PipelineConfig,
    pub inputs: Vec<ResolvedInput>,
    /// What the readers produce.
    pub record_schema: SchemaRef,
    /// What the shards hold.
    pub dataset_schema: SchemaRef,
    pub sql: Option<Arc<Sql>>,
    /// Files the stages read when built (a tokenizer, a domain vocabulary),
    /// by name, with the SHA-256 of their bytes: part of the plan.
    pub files: Vec<(&'static str, String)>,
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
        crate::storage::configure(&config.storage);
        let out = &config.output;
        crate::storage::check(&out.path).map_err(|m| source.error("output.path", m))?;
        // Commit copies shards server-side, which S3 allows up to 5 GiB.
        if crate::storage::is_url(&out.path) && out.max_shard_bytes > 5 << 30 {
            return Err(source.error(
                "output.max_shard_bytes",
                "an object-store output takes shards of at most 5 GiB (5368709120 bytes)",
            ));
        }
        let audio_stage = config.stages.iter().position(|s| s.config().is_audio());
        let inputs::Inputs {
            inputs,
            media,
            also,
            classes,
            kind,
            record_schema,
        } = inputs::resolve(&source, &config, audio_stage)?;

        let mut schema = record_schema.clone();
        let sql = match &config.sql {
            Some(query) => {
                let stage =
                    Sql::new(query, &schema, &["sample_id"]).map_err(|m| source.error("sql", m))?;
                schema = stage.output_schema(&schema)?;
                Some(Arc::new(stage))
            }
            None => None,
        };

        let mut stages = Vec::new();
        let mut files = Vec::new();
        for (i, stage) in config.stages.iter().enumerate() {
            let key = |k: &str| format!("stages[{i}].{k}");
            let mut cx = BuildContext {
                input: &schema,
                limits: &config.limits,
                before: &config.stages[..i],
                after: &config.stages[i + 1..],
                files: Vec::new(),
            };
            let built = stage
                .config()
                .build(&mut cx)
                .map_err(|e| source.error(&key(&e.key), e.message))?;
            files.append(&mut cx.files);
            let (planned, output) = match built {
                Built::Fused => continue,
                Built::Ready(s) => {
                    let output = s.output_schema(&schema);
                    (Planned::Ready(s), output)
                }
                Built::Fit(f) => {
                    let output = f.output_schema(&schema);
                    (Planned::Fit(f), output)
                }
            };
            schema = output.map_err(|e| source.error(&key("type"), e))?;
            stages.push(planned);
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
            stages,
            config,
            inputs,
            record_schema,
            dataset_schema,
            sql,
            files,
        })
    }

    /// Lines for the run summary from the stages built ready (which model
    /// ran where); fitted stages report once fitted.
    pub fn reports(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter_map(|s| match s {
                Planned::Ready(s) => s.report(),
                Planned::Fit(_) => None,
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
                Some(Media::Image) => self.keeps_full_pixels().then_some(PIXEL_BUDGET),
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

    /// A decode not followed by a resize keeps full-size pixels: image
    /// batches are then cut by the pixels their headers claim.
    fn keeps_full_pixels(&self) -> bool {
        let stages = &self.config.stages;
        stages.iter().enumerate().any(|(i, s)| {
            matches!(s, StageConfig::DecodeImage(_))
                && !matches!(stages.get(i + 1), Some(StageConfig::ResizeImage(_)))
        })
    }
}
