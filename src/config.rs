//! The pipeline file: parse, fill defaults, validate.
//!
//! Every key is checked (`deny_unknown_fields`), so a typo is an error that
//! names the file, the key and its line. Checks that need more than the
//! file's own text (does the glob match, does the SQL fit the input schema)
//! happen when the pipeline is built ([`crate::pipeline`]), still before any
//! data is read, and report the same way through [`ConfigSource::error`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::sinks::{OutputConfig, OutputFormat};
use crate::sources::input::InputConfig;
use crate::stages::StageConfig;

/// A parsed pipeline file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Seed of every random choice in the run.
    #[serde(default)]
    pub seed: u64,
    /// Optional DataFusion SQL over the table `input`: filters and projections
    /// only, applied to every batch before the stages.
    #[serde(default)]
    pub sql: Option<String>,
    pub inputs: Vec<InputConfig>,
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    pub output: OutputConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub plan: PlanConfig,
    /// Object-store settings (endpoint, region, plain HTTP, timeout,
    /// retries); credentials come from the environment only.
    #[serde(default, skip_serializing_if = "is_default")]
    pub storage: crate::storage::StorageConfig,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// How inputs are cut into tasks and batches. Part of the plan: changing it
/// changes the shards.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Input bytes per task; large files are split at line boundaries.
    #[serde(default = "default_task_bytes")]
    pub task_bytes: u64,
    /// Rows per batch handed to the stages.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// How a resumed run knows its inputs are the ones it planned:
    /// `metadata` (size and modification time, the default) or `content`
    /// (also a SHA-256 of each input, read whole at every start).
    #[serde(default, skip_serializing_if = "Verify::is_metadata")]
    pub verify: Verify,
}

/// What identifies an input in the plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    #[default]
    Metadata,
    Content,
}

impl Verify {
    fn is_metadata(&self) -> bool {
        *self == Verify::Metadata
    }
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            task_bytes: default_task_bytes(),
            batch_rows: default_batch_rows(),
            verify: Verify::Metadata,
        }
    }
}

fn default_task_bytes() -> u64 {
    32 << 20
}

fn default_batch_rows() -> usize {
    1024
}

/// The text of a pipeline (or training) file, kept to point errors at lines.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub text: String,
    /// What the file is, for errors: `pipeline` or `training`.
    what: &'static str,
}

/// Characters of the offending line an error shows.
const SHOWN_CHARS: usize = 200;

impl ConfigSource {
    /// A pipeline file whose text is in hand.
    pub fn pipeline(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        ConfigSource {
            path: path.into(),
            text: text.into(),
            what: "pipeline",
        }
    }

    /// Read a pipeline file.
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_as(path, "pipeline")
    }

    /// Read a `what` file (`training`), whose errors say so.
    pub fn read_as(path: &Path, what: &'static str) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read {what} file {}: {e}", path.display()))
        })?;
        Ok(ConfigSource {
            path: path.to_path_buf(),
            text,
            what,
        })
    }

    /// Parse the pipeline file; an error names the file, the key path and
    /// the line.
    pub fn parse(&self) -> Result<PipelineConfig> {
        self.parse_with(|path| self.stage_detail(path))
    }

    /// Parse the file as a `T`; an error names the file, the key path and
    /// the line.
    pub fn parse_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        self.parse_with(|_| None)
    }

    /// Parse the file as a `T`; `detail` turns serde's key path into a more
    /// precise key and message where it can (a stage's, behind its tag).
    fn parse_with<T: serde::de::DeserializeOwned>(
        &self,
        detail: impl Fn(&str) -> Option<(String, String)>,
    ) -> Result<T> {
        let de = toml::Deserializer::parse(&self.text).map_err(|e| {
            let line = e.span().map(|s| self.line_of_offset(s.start));
            self.error_at(line, None, e.message())
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let span_line = inner.span().map(|s| self.line_of_offset(s.start));
            let (key, message) =
                detail(&path).unwrap_or_else(|| (path.clone(), inner.message().to_string()));
            let key = match unknown_field(&message) {
                Some(field) if !key.ends_with(field) => format!("{key}.{field}"),
                _ => key,
            };
            let key = key.trim_start_matches('.').to_string();
            let line = self.line_of_key(&key).or(span_line);
            self.error_at(line, (!key.is_empty()).then_some(key.as_str()), message)
        })
    }

    /// A stage's keys are checked through its `type` tag, which hides the
    /// failing key; deserialize that stage's table alone to find it.
    fn stage_detail(&self, path: &str) -> Option<(String, String)> {
        let index: usize = path
            .strip_prefix("stages[")?
            .split(']')
            .next()?
            .parse()
            .ok()?;
        let doc: toml::Table = toml::from_str(&self.text).ok()?;
        let mut table = doc
            .get("stages")?
            .as_array()?
            .get(index)?
            .as_table()?
            .clone();
        let kind = table.remove("type")?;
        let (inner_path, message) =
            StageConfig::table_error(kind.as_str()?, toml::Value::Table(table))?;
        let key = if inner_path == "." {
            format!("stages[{index}]")
        } else {
            format!("stages[{index}].{inner_path}")
        };
        Some((key, message))
    }

    fn line_of_offset(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    /// An error about `key` (a dotted path such as `stages[1].stride` or
    /// `output.path`), located in the file when it can be found.
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        self.error_at(self.line_of_key(key), Some(key), message)
    }

    fn error_at(
        &self,
        line: Option<usize>,
        key: Option<&str>,
        message: impl std::fmt::Display,
    ) -> Error {
        let mut out = format!("invalid {} file {}", self.what, self.path.display());
        if let Some(line) = line {
            out.push_str(&format!(", line {line}"));
        }
        if let Some(key) = key {
            out.push_str(&format!(", key `{key}`"));
        }
        out.push_str(&format!(": {message}"));
        if let Some(text) = line.and_then(|l| self.text.lines().nth(l - 1)) {
            // The line as written, cut short: a hostile file's line can be
            // megabytes long.
            let text = text.trim_end();
            match text.char_indices().nth(SHOWN_CHARS) {
                Some((cut, _)) => out.push_str(&format!("\n  | {} ...", &text[..cut])),
                None => out.push_str(&format!("\n  | {text}")),
            }
        }
        Error::Config(out)
    }

    /// Line of a dotted key such as `seed`, `output.path`, `stages[1].stride`
    /// or `stages[0].train.vocab_size`; the line of the innermost table
    /// header found when the key itself is not written, else `None`.
    pub fn line_of_key(&self, key: &str) -> Option<usize> {
        let lines: Vec<&str> = self.text.lines().collect();
        let parts: Vec<&str> = key.split('.').collect();
        let (leaf, sections) = parts.split_last()?;
        let mut start = 0;
        let mut header_line = None;
        let mut table = String::new();
        for section in sections {
            let (name, index) = match section.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (*section, None),
            };
            if !table.is_empty() {
                table.push('.');
            }
            table.push_str(name);
            let header = match index {
                Some(_) => format!("[[{table}]]"),
                None => format!("[{table}]"),
            };
            let want = index.unwrap_or(0);
            let mut seen = 0;
            let found = (start..lines.len()).find(|&i| {
                if lines[i].trim() == header {
                    seen += 1;
                    seen > want
                } else {
                    false
                }
            });
            match found {
                Some(i) => {
                    start = i + 1;
                    header_line = Some(i + 1);
                }
                // Written inline (`train = { ... }`): point at that key.
                None => return find_key(&lines, start, name).or(header_line),
            }
        }
        find_key(&lines, start, leaf).or(header_line)
    }
}

/// The line (1-based) of `key = ...` from `start` up to the next table header.
fn find_key(lines: &[&str], start: usize, key: &str) -> Option<usize> {
    let name = key.split('[').next().unwrap_or(key);
    for (i, l) in lines.iter().enumerate().skip(start) {
        let t = l.trim_start();
        if t.starts_with('[') {
            break;
        }
        if let Some(rest) = t.strip_prefix(name)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

/// `unknown field `x`, expected ...` -> `x`
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// Values given on the command line that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub input: Option<String>,
    pub output: Option<String>,
    pub seed: Option<u64>,
    pub format: Option<OutputFormat>,
}

impl Overrides {
    pub fn apply(&self, source: &ConfigSource, config: &mut PipelineConfig) -> Result<()> {
        if let Some(input) = &self.input {
            if config.inputs.len() != 1 {
                return Err(source.error(
                    "inputs",
                    format!(
                        "--input replaces the pipeline's single input, but it has {}",
                        config.inputs.len()
                    ),
                ));
            }
            config.inputs[0].path = input.clone();
        }
        if let Some(output) = &self.output {
            config.output.path = output.clone();
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(format) = self.format {
            config.output.format = format;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::text::chunk::ChunkConfig;

    fn source(text: &str) -> ConfigSource {
        ConfigSource {
            path: "p.toml".into(),
            text: text.into(),
            what: "pipeline",
        }
    }

    /// Found by the `pipeline` fuzz target: a line of 100,000 brackets
    /// came back whole in the error.
    #[test]
    fn a_refusal_shows_its_line_cut_short() {
        let text = format!("seed = {}", "[".repeat(100_000));
        let e = source(&text).parse().unwrap_err().to_string();
        assert!(
            e.contains("p.toml, line 1") && e.ends_with("[[ ..."),
            "{}",
            &e[..300]
        );
        assert!(e.len() < 600, "{} bytes", e.len());
    }

    const GOOD: &str = r#"
seed = 7

[[inputs]]
path = "a/*.jsonl"

[[stages]]
type = "tokenize"
tokenizer = "t.json"

[[stages]]
type = "chunk"
max_tokens = 8
stride = 2

[output]
path = "out"
"#;

    #[test]
    fn parses_and_fills_defaults() {
        let c = source(GOOD).parse().unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.inputs[0].text_field, "text");
        assert_eq!(c.output.max_shard_bytes, 500_000_000);
        assert!(matches!(
            c.stages[1],
            StageConfig::Chunk(ChunkConfig {
                max_tokens: 8,
                stride: 2
            })
        ));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("stride = 2", "strid = 2");
        let err = source(&text).parse().unwrap_err().to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("strid"), "{err}");
        assert!(err.contains("line 14"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = GOOD.replace("max_tokens = 8", "max_tokens = \"eight\"");
        let err = source(&text).parse().unwrap_err().to_string();
        assert!(
            err.contains("stages[1].max_tokens") || err.contains("max_tokens"),
            "{err}"
        );
        assert!(err.contains("line 13"), "{err}");
    }

    #[test]
    fn locates_keys_in_array_tables() {
        let s = source(GOOD);
        assert_eq!(s.line_of_key("stages[1].stride"), Some(14));
        assert_eq!(s.line_of_key("stages[0].tokenizer"), Some(9));
        assert_eq!(s.line_of_key("output.path"), Some(17));
        assert_eq!(s.line_of_key("seed"), Some(2));
        assert_eq!(s.line_of_key("inputs[0].path"), Some(5));
        let nested = source(
            "[[stages]]\ntype = \"tokenize\"\n[stages.train]\nvocab_size = 5\n[[stages]]\n[stages.train]\nvocab_size = 6\n",
        );
        assert_eq!(nested.line_of_key("stages[0].train.vocab_size"), Some(4));
        assert_eq!(nested.line_of_key("stages[1].train.vocab_size"), Some(7));
    }

    /// A wrong-typed value in an `augment_text` table named neither its key
    /// nor its line: the per-type error detail had drifted from the list of
    /// stages and lacked `augment_text`.
    #[test]
    fn augment_text_errors_name_key_and_line() {
        let text = "[[inputs]]\npath = \"a.jsonl\"\n\n[[stages]]\ntype = \"augment_text\"\ncopies = \"two\"\n\n[output]\npath = \"out\"\n";
        let err = source(text).parse().unwrap_err().to_string();
        assert!(err.contains("key `stages[0].copies`"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }

    /// Every stage type finds the key at fault in its own table.
    #[test]
    fn every_stage_type_names_its_unknown_keys() {
        for name in StageConfig::TYPES {
            let mut table = toml::Table::new();
            table.insert("no_such_key".into(), toml::Value::Integer(1));
            let (path, message) = StageConfig::table_error(name, toml::Value::Table(table))
                .unwrap_or_else(|| panic!("{name}: no error detail"));
            assert!(
                path.contains("no_such_key") || message.contains("no_such_key"),
                "{name}: {path}: {message}"
            );
        }
    }
}
