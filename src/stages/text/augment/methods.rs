//! The augmentations of `augment_text` and their tables: `[stages.synonym]`
//! (WordNet synonyms, with nlpaug's `SynonymAug` parameters) and
//! `[stages.back_translation]` (Apertium, a command or an ONNX model there
//! and back), each built from its table into a ready method.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::seq2seq::{Search, Seq2Seq};
use crate::augment::synonym::{SynonymParams, SynonymReplacer};
use crate::augment::translate::{Chain, ProcessTranslator, Translator};
use crate::augment::wordnet::WordNet;
use crate::stages::BuildError;

use super::AugmentMethod;

/// WordNet synonym replacement, with nlpaug's SynonymAug parameters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SynonymConfig {
    /// The WordNet 3.0 database directory (`index.noun`, `data.noun`...).
    #[serde(default = "default_wordnet")]
    pub wordnet: String,
    /// The share of words to replace, rounded up.
    #[serde(default = "default_aug_p")]
    pub aug_p: f64,
    #[serde(default = "default_aug_min")]
    pub aug_min: usize,
    /// At most this many words per copy; 0 for no limit.
    #[serde(default = "default_aug_max")]
    pub aug_max: usize,
    /// Words never replaced (compared lower-cased).
    #[serde(default)]
    pub stopwords: Vec<String>,
    /// A file of more stopwords, one a line.
    #[serde(default)]
    pub stopwords_file: Option<String>,
    /// Where parts of speech come from: `none` (synonyms of any part of
    /// speech) or `apertium` (its tagger; nouns take noun synonyms...).
    #[serde(default)]
    pub pos: PosTagger,
    /// `pos = "apertium"`: the mode whose analyser and tagger run
    /// (`eng-spa` tags English).
    #[serde(default = "default_tagger_mode")]
    pub tagger: String,
    /// `pos = "apertium"`: the data directory holding `modes/`.
    #[serde(default = "default_apertium_dir")]
    pub apertium_dir: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PosTagger {
    #[default]
    None,
    Apertium,
}

fn default_tagger_mode() -> String {
    "eng-spa".into()
}

impl Default for SynonymConfig {
    fn default() -> Self {
        SynonymConfig {
            wordnet: default_wordnet(),
            aug_p: default_aug_p(),
            aug_min: default_aug_min(),
            aug_max: default_aug_max(),
            stopwords: Vec::new(),
            stopwords_file: None,
            pos: PosTagger::None,
            tagger: default_tagger_mode(),
            apertium_dir: default_apertium_dir(),
        }
    }
}

fn default_wordnet() -> String {
    "/usr/share/wordnet".into()
}
fn default_aug_p() -> f64 {
    0.3
}
fn default_aug_min() -> usize {
    1
}
fn default_aug_max() -> usize {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TranslatorBackend {
    /// Apertium's rule-based pairs, as a subprocess.
    #[default]
    Apertium,
    /// A Marian-style encoder-decoder exported to ONNX.
    Onnx,
    /// Any command speaking the null-flush protocol (one text a line, then
    /// a NUL byte; answered the same way).
    Command,
}

/// Back-translation: the text into a pivot language and back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackTranslationConfig {
    #[serde(default)]
    pub backend: TranslatorBackend,
    /// Apertium: the language of the texts and the pivot (`eng`, `spa`):
    /// pairs `eng-spa` then `spa-eng`.
    #[serde(default = "default_source_lang")]
    pub lang: String,
    #[serde(default = "default_pivot_lang")]
    pub pivot: String,
    /// Apertium: the data directory holding `modes/`.
    #[serde(default = "default_apertium_dir")]
    pub apertium_dir: String,
    /// Command: the program and its arguments; it translates there and back.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// ONNX: the model directory there (`encoder_model.onnx`,
    /// `decoder_model.onnx`, `tokenizer.json`, `config.json`) and back.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub back_model: Option<String>,
    /// ONNX: beams of the search; 1 is greedy.
    #[serde(default = "default_num_beams")]
    pub num_beams: usize,
    /// ONNX: the longest output, in tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Texts per translator call.
    #[serde(default = "default_translate_batch")]
    pub batch_size: usize,
    /// Longer texts are copied unchanged, with a note.
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    /// Seconds a batch may take before the translator is restarted.
    #[serde(default = "default_translate_timeout")]
    pub timeout_s: u64,
}

impl Default for BackTranslationConfig {
    fn default() -> Self {
        BackTranslationConfig {
            backend: TranslatorBackend::default(),
            lang: default_source_lang(),
            pivot: default_pivot_lang(),
            apertium_dir: default_apertium_dir(),
            command: None,
            model: None,
            back_model: None,
            num_beams: default_num_beams(),
            max_new_tokens: default_max_new_tokens(),
            batch_size: default_translate_batch(),
            max_chars: default_max_chars(),
            timeout_s: default_translate_timeout(),
        }
    }
}

fn default_source_lang() -> String {
    "eng".into()
}
fn default_pivot_lang() -> String {
    "spa".into()
}
pub fn default_apertium_dir() -> String {
    "/usr/share/apertium".into()
}
fn default_num_beams() -> usize {
    1
}
fn default_max_new_tokens() -> usize {
    128
}
fn default_translate_batch() -> usize {
    64
}
fn default_max_chars() -> usize {
    5000
}
fn default_translate_timeout() -> u64 {
    120
}

/// Back-translation as the stage runs it.
pub struct BackTranslation {
    pub translator: Box<dyn Translator>,
    pub batch_size: usize,
    pub max_chars: usize,
}

/// Synonym replacement as the stage runs it.
pub struct Synonym {
    pub replacer: SynonymReplacer,
    /// Apertium's tagger, for parts of speech.
    pub tagger: Option<Box<dyn Translator>>,
}

/// Texts a tagger call takes.
pub(super) const TAG_BATCH: usize = 64;

#[derive(Clone)]
pub enum Method {
    Synonym(Arc<Synonym>),
    BackTranslation(Arc<BackTranslation>),
}

impl Method {
    pub(super) fn kind(&self) -> AugmentMethod {
        match self {
            Method::Synonym(_) => AugmentMethod::Synonym,
            Method::BackTranslation(_) => AugmentMethod::BackTranslation,
        }
    }
}

/// `translator` over `texts` in chunks of `size`, the chunks in parallel;
/// each text's result, or its chunk's error.
pub(super) fn in_chunks(
    translator: &dyn Translator,
    texts: &[String],
    size: usize,
) -> Vec<std::result::Result<String, String>> {
    let chunks: Vec<&[String]> = texts.chunks(size.max(1)).collect();
    chunks
        .into_par_iter()
        .flat_map_iter(|chunk| match translator.translate(chunk) {
            Ok(out) => out.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e); chunk.len()],
        })
        .collect()
}

/// A config error: the key under the stage and the message.
pub(super) type Keyed = BuildError;

pub(super) fn build_synonym(s: &SynonymConfig) -> std::result::Result<Synonym, Keyed> {
    let keyed = |k: &str, m: String| BuildError::new(&format!("synonym.{k}"), m);
    if !(s.aug_p >= 0.0 && s.aug_p <= 1.0) {
        return Err(keyed("aug_p", "aug_p must be from 0 to 1".into()));
    }
    if s.aug_max != 0 && s.aug_min > s.aug_max {
        return Err(keyed("aug_min", "aug_min is above aug_max".into()));
    }
    let mut stopwords: HashSet<String> = s.stopwords.iter().map(|w| w.to_lowercase()).collect();
    if let Some(path) = &s.stopwords_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| keyed("stopwords_file", format!("cannot read {path}: {e}")))?;
        stopwords.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_lowercase),
        );
    }
    let wordnet = WordNet::open(Path::new(&s.wordnet)).map_err(|e| {
        keyed(
            "wordnet",
            format!("{e} (WordNet 3.0's database files; Debian's wordnet-base installs them in /usr/share/wordnet)"),
        )
    })?;
    let tagger: Option<Box<dyn Translator>> = match s.pos {
        PosTagger::None => None,
        PosTagger::Apertium => Some(Box::new(
            ProcessTranslator::apertium_tagger(
                Path::new(&s.apertium_dir),
                &s.tagger,
                Duration::from_secs(120),
            )
            .map_err(|e| keyed("tagger", e))?,
        )),
    };
    Ok(Synonym {
        replacer: SynonymReplacer::new(
            Arc::new(wordnet),
            SynonymParams {
                aug_p: s.aug_p,
                aug_min: s.aug_min,
                aug_max: (s.aug_max != 0).then_some(s.aug_max),
                stopwords,
            },
        ),
        tagger,
    })
}

pub(super) fn build_back_translation(
    b: &BackTranslationConfig,
) -> std::result::Result<BackTranslation, Keyed> {
    let keyed = |k: &str, m: String| BuildError::new(&format!("back_translation.{k}"), m);
    if b.batch_size == 0 {
        return Err(keyed("batch_size", "batch_size must be at least 1".into()));
    }
    let timeout = Duration::from_secs(b.timeout_s.max(1));
    let translator: Box<dyn Translator> = match b.backend {
        TranslatorBackend::Apertium => {
            let pairs = vec![
                format!("{}-{}", b.lang, b.pivot),
                format!("{}-{}", b.pivot, b.lang),
            ];
            Box::new(
                ProcessTranslator::apertium(Path::new(&b.apertium_dir), &pairs, timeout)
                    .map_err(|e| keyed("lang", e))?,
            )
        }
        TranslatorBackend::Command => {
            let argv = b.command.clone().ok_or_else(|| {
                keyed(
                    "command",
                    "backend = \"command\" needs command = [\"program\", \"arg\"...]".into(),
                )
            })?;
            Box::new(ProcessTranslator::command(argv, timeout).map_err(|e| keyed("command", e))?)
        }
        TranslatorBackend::Onnx => {
            let search = Search {
                beams: b.num_beams,
                max_new_tokens: b.max_new_tokens,
                length_penalty: 1.0,
            };
            if b.num_beams == 0 {
                return Err(keyed(
                    "num_beams",
                    "num_beams must be at least 1 (1 is greedy)".into(),
                ));
            }
            let mut legs: Vec<Box<dyn Translator>> = Vec::new();
            for key in ["model", "back_model"] {
                let dir = match key {
                    "model" => &b.model,
                    _ => &b.back_model,
                };
                let dir = dir.as_ref().ok_or_else(|| {
                    keyed(
                        key,
                        format!("backend = \"onnx\" needs `model` (into the pivot language) and `back_model` (back): directories of a Marian model exported to ONNX; `{key}` is missing"),
                    )
                })?;
                legs.push(Box::new(
                    Seq2Seq::open(Path::new(dir), search).map_err(|e| keyed(key, e))?,
                ));
            }
            Box::new(Chain(legs))
        }
    };
    Ok(BackTranslation {
        translator,
        batch_size: b.batch_size,
        max_chars: b.max_chars,
    })
}
