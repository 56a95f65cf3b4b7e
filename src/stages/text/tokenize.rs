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

use arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, UInt32Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, Model, ModelWrapper, OffsetReferential, OffsetType, PostProcessorWrapper,
    PreTokenizer, PreTokenizerWrapper, Tokenizer,
};

use crate::config::{TokenizeConfig, TrainConfig};
use crate::error::{Error, Result};
use crate::stages::text::bytelevel;
use crate::stages::{BatchContext, Stage};

pub fn input_ids_field() -> Field {
    Field::new(
        "input_ids",
        DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
        false,
    )
}

pub struct TokenizeStage {
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

impl TokenizeStage {
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
        TokenizeStage {
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
        if text.is_empty() {
            // `tokenizers` has no split to prefix in an empty text.
            return Ok(());
        }
        let prefixed;
        let text = if add_prefix_space && !text.starts_with(' ') {
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

/// Load a `tokenizer.json`.
pub fn load(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| Error::Config(format!("cannot load tokenizer {}: {e}", path.display())))
}

/// Read a domain vocabulary: one term per line, blank lines and `#` comments
/// ignored.
pub fn read_domain_vocab(path: &Path) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// Add domain terms as whole tokens.
pub fn add_domain_vocab(tokenizer: &mut Tokenizer, terms: &[String]) -> Result<()> {
    let tokens = terms
        .iter()
        .map(|t| AddedToken::from(t.clone(), false).single_word(true));
    tokenizer
        .add_tokens(tokens)
        .map_err(|e| Error::Execution(format!("cannot add the domain vocabulary: {e}")))?;
    Ok(())
}

/// Train a byte-level BPE tokenizer on `texts`. The result depends only on
/// the multiset of texts, not on their order or the thread count.
pub fn train<I, S>(config: &TrainConfig, texts: I) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default()));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::default()));
    let special = config
        .special_tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .special_tokens(special)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build()
        .into();
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| Error::Execution(format!("tokenizer training failed: {e}")))?;
    Ok(tokenizer)
}

impl Stage for TokenizeStage {
    fn name(&self) -> &str {
        "tokenize"
    }

    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let text = input.field_with_name(&self.text_column).map_err(|_| {
            Error::Config(format!(
                "tokenize: the input has no column `{}`",
                self.text_column
            ))
        })?;
        if text.data_type() != &DataType::Utf8 {
            return Err(Error::Config(format!(
                "tokenize: column `{}` is {}, expected a string",
                self.text_column,
                text.data_type()
            )));
        }
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .filter(|f| self.keep_text || f.name() != &self.text_column)
            .filter(|f| !matches!(f.name().as_str(), "window" | "input_ids" | "length"))
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("window", DataType::UInt32, false));
        fields.push(input_ids_field());
        fields.push(Field::new("length", DataType::UInt32, false));
        Ok(Arc::new(Schema::new(fields)))
    }

    fn process(&self, batch: RecordBatch, cx: &mut BatchContext) -> Result<RecordBatch> {
        let text = batch
            .column_by_name(&self.text_column)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| {
                Error::Execution(format!("tokenize: no string column `{}`", self.text_column))
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
        let train = TrainConfig {
            vocab_size: 300,
            min_frequency: 1,
            special_tokens: vec!["<s>".into()],
        };
        let mut tok = super::train(&train, corpus.iter()).unwrap();
        add_domain_vocab(&mut tok, &["kiln-fired".into()]).unwrap();
        let texts = [
            "the kiln fires clay",
            "  leading and  double  spaces\tand tabs\n",
            "kiln-fired pots, a kiln-fired-ish one, <s> special",
            "unicode: café, naïve, 東京, emoji 🔥🔥",
            "",
            "The Kiln FIRES clay",
        ];
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
            (lowercased, "words"),
            (truncated, "encode"),
        ] {
            let tok = Arc::new(tok);
            for add in [false, true] {
                let stage = TokenizeStage::new(&config(add), tok.clone());
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
