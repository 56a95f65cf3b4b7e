//! A pipeline built from its file: inputs resolved to files, stages built and
//! their schemas chained, the output schema checked against `schemas/`. All
//! of it happens before any data is read, and every failure names the file,
//! the key and the line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::config::{
    ConfigSource, InputFormat, Overrides, PipelineConfig, StageConfig, TokenizeConfig, TrainConfig,
};
use crate::error::Result;
use crate::schema;
use crate::sources::{self, InputSpec, ReadOptions};
use crate::stages::Stage;
use crate::stages::sql::SqlStage;
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

pub struct Pipeline {
    pub source: ConfigSource,
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

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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
        for (i, input) in config.inputs.iter().enumerate() {
            let key = |k: &str| format!("inputs[{i}].{k}");
            let format = match input.format.or_else(|| InputFormat::from_path(&input.path)) {
                Some(f) => f,
                None => {
                    return Err(source.error(
                        &key("format"),
                        format!("cannot tell the format of `{}`; set format = \"jsonl\" | \"text\" | \"csv\" | \"parquet\"", input.path),
                    ));
                }
            };
            if input.delimiter.len() != 1 {
                return Err(source.error(&key("delimiter"), "the delimiter must be a single byte"));
            }
            for (j, c) in input.columns.iter().enumerate() {
                if input.columns[..j].contains(c) {
                    return Err(source.error(&key("columns"), format!("`{c}` is listed twice")));
                }
                if matches!(c.as_str(), "sample_id" | "source" | "position" | "text")
                    || *c == input.text_field
                {
                    return Err(source.error(
                        &key("columns"),
                        format!("`{c}` is a column kiln fills itself"),
                    ));
                }
                if !columns.contains(c) {
                    columns.push(c.clone());
                }
            }
            let files = expand(&input.path).map_err(|m| source.error(&key("path"), m))?;
            inputs.push(ResolvedInput {
                spec: InputSpec::from_config(input, format),
                files,
            });
        }
        let record_schema = sources::record_schema(&columns);

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
        for (i, stage) in config.stages.iter().enumerate() {
            let key = |k: &str| format!("stages[{i}].{k}");
            let built: Box<dyn Stage> = match stage {
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
                                sha256: sha256_hex(&bytes),
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
                        domain_vocab = Some((terms, sha256_hex(&bytes)));
                    }
                    tokenize = Some((t.clone(), from));
                    Box::new(TokenizeStage::new(
                        t,
                        Arc::new(Tokenizer::new(tokenizers::models::bpe::BPE::default())),
                    ))
                }
                StageConfig::Chunk(c) => {
                    Box::new(ChunkStage::new(c).map_err(|m| source.error(&key("max_tokens"), m))?)
                }
            };
            schema = built
                .output_schema(&schema)
                .map_err(|e| source.error(&key("type"), e))?;
        }
        let dataset_schema = schema::TEXT.output_schema(&schema).map_err(|m| {
            source.error(
                "stages",
                format!("the output does not fit schemas/text.json: {m}"),
            )
        })?;
        Ok(Pipeline {
            source,
            config,
            inputs,
            record_schema,
            dataset_schema,
            sql,
            tokenize,
            domain_vocab,
        })
    }

    /// The stages that run on every batch, in order, given the tokenizer.
    pub fn stages(&self, tokenizer: Option<Arc<Tokenizer>>) -> Vec<Arc<dyn Stage>> {
        let mut out: Vec<Arc<dyn Stage>> = Vec::new();
        if let Some(sql) = &self.sql {
            out.push(sql.clone());
        }
        for stage in &self.config.stages {
            match stage {
                StageConfig::Tokenize(t) => {
                    let tok = tokenizer
                        .clone()
                        .expect("a pipeline with a tokenize stage is run with its tokenizer");
                    out.push(Arc::new(TokenizeStage::new(t, tok)));
                }
                StageConfig::Chunk(c) => {
                    out.push(Arc::new(ChunkStage::new(c).expect("checked at build")))
                }
            }
        }
        out
    }

    /// What the readers need besides a split.
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            schema: self.record_schema.clone(),
            limits: self.config.limits.clone(),
            batch_rows: self.config.plan.batch_rows.max(1),
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
