//! Byte-level BPE tokenization with HuggingFace `tokenizers`: each document
//! becomes `input_ids` (list of uint32) and `length`.
//!
//! The tokenizer is either loaded from a `tokenizer.json` or trained on the
//! pipeline's own corpus (streamed into the trainer, never held whole). Terms
//! of a domain vocabulary are added as tokens, so they are never split.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::AhoCorasick;
use rayon::iter::{ParallelBridge, ParallelIterator};

use crate::error::{Error, Result};
use crate::stages::{
    BatchContext, BuildContext, BuildError, BuildStage, Built, Fit, FitContext, Stage,
};
use crate::tokenize::TrainConfig;
use crate::tokenize::bpe::WordCounter;
use crate::tokenize::{self, bytelevel};
use arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, UInt32Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use tokenizers::{
    Model, ModelWrapper, OffsetReferential, OffsetType, PostProcessorWrapper, PreTokenizer,
    PreTokenizerWrapper, Tokenizer,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeConfig {
    /// An existing `tokenizer.json` to load. Exclusive with `train`.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Train a byte-level BPE tokenizer on the pipeline's own corpus.
    #[serde(default)]
    pub train: Option<TrainConfig>,
    /// A file of terms, one per line, that are never split into sub-words.
    #[serde(default)]
    pub domain_vocab: Option<String>,
    /// The column holding the text.
    #[serde(default = "default_text_field")]
    pub text_column: String,
    /// Keep the text column in the output beside the ids.
    #[serde(default)]
    pub keep_text: bool,
    /// Let the tokenizer's post-processor add its special tokens.
    #[serde(default)]
    pub add_special_tokens: bool,
}

fn default_text_field() -> String {
    "text".into()
}

pub fn input_ids_field() -> Field {
    Field::new(
        "input_ids",
        DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
        false,
    )
}

pub struct Tokenize {
    tokenizer: Arc<Tokenizer>,
    text_column: String,
    keep_text: bool,
    add_special_tokens: bool,
    mode: Mode,
    /// Tells this stage's cache entries from another's.
    id: u64,
}

/// How ids are computed. All three give exactly `encode`'s ids.
enum Mode {
    /// `encode` itself: post-processing, truncation or padding act on the
    /// whole encoding, or BPE dropout makes ids random.
    Encode,
    /// Pre-tokenize with the tokenizer, then ids word by word through the
    /// [`WordCache`].
    Words,
    /// A byte-level BPE with GPT-2's regex and no normalizer: split with
    /// [`bytelevel`], skipping `PreTokenizedString` altogether. Texts that
    /// contain an added token's content take the `Words` path.
    ByteLevel {
        add_prefix_space: bool,
        added: Option<AhoCorasick>,
    },
}

static NEXT_STAGE_ID: AtomicU64 = AtomicU64::new(1);

/// Words seen by this thread and their ids, keyed by the raw split
/// (`ByteLevel` mode) or the pre-tokenized split (`Words` mode). Natural
/// text repeats a small set of words, so most words skip the model. Cleared
/// when full, so memory stays bounded.
#[derive(Default)]
struct WordCache {
    owner: u64,
    /// Approximate bytes held, keys and ids.
    bytes: usize,
    raw: HashMap<String, Box<[u32]>>,
    pre_tokenized: HashMap<String, Box<[u32]>>,
    mapped: String,
}

/// The cache is cleared when it holds this many bytes.
const WORD_CACHE_BYTES: usize = 64 << 20;
/// Longer splits (a whole document when there is no pre-tokenizer, a long
/// run of letters) rarely repeat: they are not cached.
const MAX_CACHED_WORD: usize = 256;

impl WordCache {
    /// Remember the ids of a split: `raw` for `ByteLevel` mode's keys,
    /// else pre-tokenized ones.
    fn insert(&mut self, raw: bool, word: &str, ids: Box<[u32]>) {
        if word.len() > MAX_CACHED_WORD {
            return;
        }
        self.bytes += word.len() + ids.len() * 4 + 64;
        let map = if raw {
            &mut self.raw
        } else {
            &mut self.pre_tokenized
        };
        map.insert(word.to_string(), ids);
    }
}

thread_local! {
    static WORD_CACHE: RefCell<WordCache> = RefCell::new(WordCache::default());
}

impl Tokenize {
    pub fn new(config: &TokenizeConfig, tokenizer: Arc<Tokenizer>) -> Self {
        let deterministic =
            !matches!(tokenizer.get_model(), ModelWrapper::BPE(bpe) if bpe.dropout.is_some());
        let no_post = !config.add_special_tokens
            || matches!(
                tokenizer.get_post_processor(),
                None | Some(PostProcessorWrapper::ByteLevel(_))
            );
        let per_word = deterministic
            && no_post
            && tokenizer.get_truncation().is_none()
            && tokenizer.get_padding().is_none();
        let mode = match tokenizer.get_pre_tokenizer() {
            _ if !per_word => Mode::Encode,
            Some(PreTokenizerWrapper::ByteLevel(bl))
                if bl.use_regex && tokenizer.get_normalizer().is_none() =>
            {
                let contents: Vec<String> = tokenizer
                    .get_added_tokens_decoder()
                    .values()
                    .map(|t| t.content.clone())
                    .filter(|c| !c.is_empty())
                    .collect();
                Mode::ByteLevel {
                    add_prefix_space: bl.add_prefix_space,
                    added: (!contents.is_empty()).then(|| {
                        AhoCorasick::new(&contents).expect("added tokens make an automaton")
                    }),
                }
            }
            _ => Mode::Words,
        };
        Tokenize {
            tokenizer,
            text_column: config.text_column.clone(),
            keep_text: config.keep_text,
            add_special_tokens: config.add_special_tokens,
            mode,
            id: NEXT_STAGE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Append the ids of `text` to `out`: exactly what `encode` gives.
    fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> tokenizers::Result<()> {
        let t = &*self.tokenizer;
        let bytelevel = match &self.mode {
            Mode::Encode => {
                let enc = t.encode_fast(text, self.add_special_tokens)?;
                out.extend_from_slice(enc.get_ids());
                return Ok(());
            }
            Mode::ByteLevel {
                add_prefix_space,
                added,
            } => added
                .as_ref()
                .is_none_or(|a| !a.is_match(text))
                .then_some(*add_prefix_space),
            Mode::Words => None,
        };
        WORD_CACHE.with_borrow_mut(|cache| {
            if cache.owner != self.id || cache.bytes >= WORD_CACHE_BYTES {
                cache.raw.clear();
                cache.pre_tokenized.clear();
                cache.bytes = 0;
                cache.owner = self.id;
            }
            match bytelevel {
                Some(add_prefix_space) => self.bytelevel_ids(text, add_prefix_space, cache, out),
                None => self.word_ids(text, cache, out),
            }
        })
    }

    fn bytelevel_ids(
        &self,
        text: &str,
        add_prefix_space: bool,
        cache: &mut WordCache,
        out: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        let prefixed;
        let text = if bytelevel::prefixes(text, add_prefix_space) {
            prefixed = format!(" {text}");
            &prefixed
        } else {
            text
        };
        let model = self.tokenizer.get_model();
        let mut result = Ok(());
        bytelevel::split(text, |word| {
            if let Some(ids) = cache.raw.get(word) {
                out.extend_from_slice(ids);
                return;
            }
            bytelevel::map_bytes(word, &mut cache.mapped);
            match model.tokenize(&cache.mapped) {
                Ok(tokens) => {
                    let ids: Box<[u32]> = tokens.iter().map(|t| t.id).collect();
                    out.extend_from_slice(&ids);
                    cache.insert(true, word, ids);
                }
                Err(e) => result = Err(e),
            }
        });
        result
    }

    fn word_ids(
        &self,
        text: &str,
        cache: &mut WordCache,
        out: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        let t = &*self.tokenizer;
        let mut pre = t
            .get_added_vocabulary()
            .extract_and_normalize(t.get_normalizer(), text);
        if let Some(pt) = t.get_pre_tokenizer() {
            pt.pre_tokenize(&mut pre)?;
        }
        for (word, _, tokens) in pre.get_splits(OffsetReferential::Original, OffsetType::None) {
            if let Some(tokens) = tokens {
                // An added token, already matched.
                out.extend(tokens.iter().map(|t| t.id));
            } else if let Some(ids) = cache.pre_tokenized.get(word) {
                out.extend_from_slice(ids);
            } else {
                let ids: Box<[u32]> = t.get_model().tokenize(word)?.iter().map(|t| t.id).collect();
                out.extend_from_slice(&ids);
                cache.insert(false, word, ids);
            }
        }
        Ok(())
    }
}

impl Stage for Tokenize {
    fn name(&self) -> &str {
        "tokenize"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        tokenized_schema(&self.text_column, self.keep_text, input)
    }

    fn artifacts(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let json = self
            .tokenizer
            .to_string(false)
            .map_err(|e| Error::Execution(format!("cannot save the tokenizer: {e}")))?;
        Ok(vec![(TOKENIZER_FILE, json.into_bytes())])
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let text = batch
            .column_by_name(&self.text_column)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| {
                Error::Internal(format!("tokenize: no string column `{}`", self.text_column))
            })?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut values: Vec<u32> = Vec::new();
        let mut offsets: Vec<i32> = Vec::with_capacity(batch.num_rows() + 1);
        let mut lengths: Vec<u32> = Vec::with_capacity(batch.num_rows());
        offsets.push(0);
        for row in 0..batch.num_rows() {
            if text.is_null(row) {
                cx.reject(&batch, row, "null_text", "the text is null")?;
                keep.push(false);
                continue;
            }
            let start = values.len();
            match self.encode_into(text.value(row), &mut values) {
                Ok(()) => {
                    offsets.push(values.len() as i32);
                    lengths.push((values.len() - start) as u32);
                    keep.push(true);
                }
                Err(e) => {
                    values.truncate(start);
                    cx.reject(&batch, row, "encode_failed", e.to_string())?;
                    keep.push(false);
                }
            }
        }
        let batch = if keep.iter().all(|&k| k) {
            batch
        } else {
            arrow::compute::filter_record_batch(&batch, &keep.into())?
        };
        let schema = self.output_schema(&batch.schema())?;
        let item = Arc::new(Field::new("item", DataType::UInt32, true));
        let ids = ListArray::new(
            item,
            OffsetBuffer::new(offsets.into()),
            Arc::new(UInt32Array::from(values)),
            None,
        );
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(f, _)| schema.field_with_name(f.name()).is_ok())
            .filter(|(f, _)| !matches!(f.name().as_str(), "window" | "input_ids" | "length"))
            .map(|(_, c)| c.clone())
            .collect();
        columns.push(Arc::new(UInt32Array::from(vec![0u32; n])));
        columns.push(Arc::new(ids));
        columns.push(Arc::new(UInt32Array::from(lengths)));
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// The schema after tokenizing `text_column`: the ids and their count,
/// the text kept or dropped.
fn tokenized_schema(text_column: &str, keep_text: bool, input: &SchemaRef) -> Result<SchemaRef> {
    let text = input.field_with_name(text_column).map_err(|_| {
        Error::Config(format!(
            "tokenize: the input has no column `{}`",
            text_column
        ))
    })?;
    if text.data_type() != &DataType::Utf8 {
        return Err(Error::Config(format!(
            "tokenize: column `{}` is {}, expected a string",
            text_column,
            text.data_type()
        )));
    }
    let mut fields: Vec<Field> = input
        .fields()
        .iter()
        .filter(|f| keep_text || f.name() != text_column)
        .filter(|f| !matches!(f.name().as_str(), "window" | "input_ids" | "length"))
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("window", DataType::UInt32, false));
    fields.push(input_ids_field());
    fields.push(Field::new("length", DataType::UInt32, false));
    Ok(Arc::new(Schema::new(fields)))
}

/// The file in the dataset directory holding the tokenizer the ids come from.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

impl BuildStage for TokenizeConfig {
    fn build(&self, cx: &mut BuildContext) -> std::result::Result<Built, BuildError> {
        if cx.after_a("tokenize") {
            return Err(BuildError::new(
                "type",
                "only one tokenize stage is allowed",
            ));
        }
        let loaded = match (&self.tokenizer, &self.train) {
            (Some(_), Some(_)) => {
                return Err(BuildError::new(
                    "tokenizer",
                    "set either `tokenizer` or [stages.train], not both",
                ));
            }
            (None, None) => {
                return Err(BuildError::new(
                    "type",
                    "set `tokenizer = \"path/tokenizer.json\"` or a [stages.train] table",
                ));
            }
            (Some(path), None) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    BuildError::new("tokenizer", format!("cannot read {path}: {e}"))
                })?;
                let tok =
                    tokenize::load(Path::new(path)).map_err(|e| BuildError::new("tokenizer", e))?;
                if let ModelWrapper::BPE(bpe) = tok.get_model()
                    && bpe.dropout.is_some()
                {
                    return Err(BuildError::new(
                        "tokenizer",
                        format!(
                            "{path} sets BPE dropout, which makes ids random; kiln's output must be a function of the input and the seed: remove \"dropout\" from it"
                        ),
                    ));
                }
                cx.files
                    .push(("tokenizer", crate::dataset::sha256_hex(&bytes)));
                Some(tok)
            }
            (None, Some(train)) => {
                if train.vocab_size < 257 {
                    return Err(BuildError::new(
                        "train.vocab_size",
                        "vocab_size must be at least 257 (the byte alphabet)",
                    ));
                }
                if train.max_words == 0 {
                    return Err(BuildError::new(
                        "train.max_words",
                        "max_words must be at least 1",
                    ));
                }
                None
            }
        };
        let terms = match &self.domain_vocab {
            Some(path) => {
                let unreadable = |e: std::io::Error| {
                    BuildError::new("domain_vocab", format!("cannot read {path}: {e}"))
                };
                let bytes = std::fs::read(path).map_err(unreadable)?;
                let terms = tokenize::read_domain_vocab(Path::new(path)).map_err(unreadable)?;
                cx.files
                    .push(("domain_vocab", crate::dataset::sha256_hex(&bytes)));
                Some(terms)
            }
            None => None,
        };
        tokenized_schema(&self.text_column, self.keep_text, cx.input)
            .map_err(|e| BuildError::new("type", e))?;
        match (loaded, &self.train) {
            (Some(mut tok), _) => {
                if let Some(terms) = &terms {
                    tokenize::add_domain_vocab(&mut tok, terms)
                        .map_err(|e| BuildError::new("domain_vocab", e))?;
                }
                Ok(Built::Ready(Arc::new(Tokenize::new(self, Arc::new(tok)))))
            }
            (None, train) => Ok(Built::Fit(Arc::new(TrainTokenizer {
                config: self.clone(),
                train: train.clone().expect("checked above"),
                terms,
            }))),
        }
    }
}

/// A `tokenize` stage whose tokenizer is trained on the pipeline's own
/// input first (`[stages.train]`). The texts stream into the trainer; the
/// tokenizer is saved in the dataset directory, where a resumed run finds it.
struct TrainTokenizer {
    config: TokenizeConfig,
    train: TrainConfig,
    /// The domain vocabulary, added once trained.
    terms: Option<Vec<String>>,
}

impl Fit for TrainTokenizer {
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        tokenized_schema(&self.config.text_column, self.config.keep_text, input)
    }

    fn describe(&self, cx: &FitContext) -> String {
        format!(
            "training a byte-level BPE tokenizer (vocab {}) on {} of input",
            self.train.vocab_size,
            indicatif::HumanBytes(cx.input_bytes)
        )
    }

    fn text_only(&self) -> bool {
        true
    }

    fn resume(&self, out: &Path) -> Result<Option<Arc<dyn Stage>>> {
        let path = out.join(TOKENIZER_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let tok = tokenize::load(&path)?;
        Ok(Some(Arc::new(Tokenize::new(&self.config, Arc::new(tok)))))
    }

    fn fit(
        &self,
        batches: &mut (dyn Iterator<Item = RecordBatch> + Send),
        cx: &FitContext,
    ) -> Result<Arc<dyn Stage>> {
        let column = self.config.text_column.as_str();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cx.threads)
            .build()
            .map_err(|e| Error::Execution(format!("thread pool: {e}")))?;
        // Words are counted on every thread as the batches arrive; the
        // merges are learnt from the counts.
        let counter = WordCounter::new(self.train.add_prefix_space, self.train.max_words);
        pool.install(|| {
            batches.par_bridge().try_for_each(|batch| {
                match batch
                    .column_by_name(column)
                    .and_then(|c| c.as_string_opt::<i32>())
                {
                    Some(texts) => counter.count(texts.iter().flatten()),
                    None => Ok(()),
                }
            })
        })?;
        let mut tok = tokenize::from_counts(&self.train, counter.into_counts())?;
        if let Some(terms) = &self.terms {
            tokenize::add_domain_vocab(&mut tok, terms)?;
        }
        Ok(Arc::new(Tokenize::new(&self.config, Arc::new(tok))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejects::RejectSink;
    use crate::sources::{RecordBuilder, record_schema};

    fn config(add_special_tokens: bool) -> TokenizeConfig {
        TokenizeConfig {
            tokenizer: None,
            train: None,
            domain_vocab: None,
            text_column: "text".into(),
            keep_text: false,
            add_special_tokens,
        }
    }

    /// The word cache must give exactly what `encode` gives, added tokens,
    /// odd whitespace and unicode included.
    #[test]
    fn word_cache_ids_equal_encode() {
        let corpus = [
            "the kiln fires clay",
            "clay pots and arrows",
            "tokens stream through shards",
        ];
        let train = TrainConfig::new(300, 1, vec!["<s>".into()]);
        let mut tok = tokenize::train(&train, corpus.iter()).unwrap();
        tokenize::add_domain_vocab(&mut tok, &["kiln-fired".into()]).unwrap();
        let texts = [
            "the kiln fires clay",
            "  leading and  double  spaces\tand tabs\n",
            "kiln-fired pots, a kiln-fired-ish one, <s> special",
            "unicode: café, naïve, 東京, emoji 🔥🔥",
            "",
            "The Kiln FIRES clay",
        ];
        // Trained without a prefix space (Python's default); the same
        // tokenizer with one exercises the prefixed split.
        let mut prefixed = tok.clone();
        prefixed.with_pre_tokenizer(Some(
            tokenizers::pre_tokenizers::byte_level::ByteLevel::default().add_prefix_space(true),
        ));
        let mut lowercased = tok.clone();
        lowercased
            .with_normalizer(Some(tokenizers::normalizers::Lowercase))
            .unwrap();
        let mut truncated = tok.clone();
        truncated
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: 5,
                ..Default::default()
            }))
            .unwrap();
        for (tok, mode) in [
            (tok, "bytelevel"),
            (prefixed, "bytelevel"),
            (lowercased, "words"),
            (truncated, "encode"),
        ] {
            let tok = Arc::new(tok);
            for add in [false, true] {
                let stage = Tokenize::new(&config(add), tok.clone());
                let got_mode = match stage.mode {
                    Mode::ByteLevel { .. } => "bytelevel",
                    Mode::Words => "words",
                    Mode::Encode => "encode",
                };
                assert_eq!(got_mode, mode);
                let mut b = RecordBuilder::new(record_schema(&[]), &[], "t");
                for (i, t) in texts.iter().enumerate() {
                    b.push(i as u64, t, &[]);
                }
                let batch = b.finish().unwrap().unwrap();
                let mut rejects = RejectSink::discard();
                let mut cx = BatchContext {
                    seed: 0,
                    stage: "tokenize",
                    rejects: &mut rejects,
                    filtered: 0,
                };
                // Twice, so the second pass runs from the cache.
                for _ in 0..2 {
                    let out = stage.process(batch.clone(), &mut cx).unwrap();
                    let ids = out.column_by_name("input_ids").unwrap().as_list::<i32>();
                    for (i, t) in texts.iter().enumerate() {
                        let want = tok.encode(*t, add).unwrap().get_ids().to_vec();
                        let got: Vec<u32> = ids
                            .value(i)
                            .as_primitive::<arrow::datatypes::UInt32Type>()
                            .values()
                            .to_vec();
                        assert_eq!(got, want, "{mode} {t:?}");
                    }
                }
            }
        }
    }
}
