//! The byte-level BPE library under the `tokenize` stage: loading a
//! `tokenizer.json`, training one with `tokenizers`' BPE trainer, domain
//! terms added as whole tokens, and GPT-2's pre-tokenization split done
//! without `tokenizers`' string machinery ([`bytelevel`]).

pub mod bpe;
pub mod bytelevel;

use std::path::Path;

use rayon::iter::{ParallelBridge, ParallelIterator};
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// What to train: `[stages.train]` of a `tokenize` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    #[serde(default)]
    pub special_tokens: Vec<String>,
    /// Whether a text not starting with a space gets one, so that its first
    /// word is split as it is elsewhere (`ByteLevel(add_prefix_space)`).
    /// False, as in Python's `ByteLevelBPETokenizer()`.
    #[serde(default)]
    pub add_prefix_space: bool,
    /// The most distinct words the trainer counts (its memory: about 200
    /// bytes a word at the peak); a corpus with more is refused.
    #[serde(default = "default_max_words")]
    pub max_words: usize,
}

impl TrainConfig {
    pub fn new(vocab_size: usize, min_frequency: u64, special_tokens: Vec<String>) -> Self {
        TrainConfig {
            vocab_size,
            min_frequency,
            special_tokens,
            add_prefix_space: false,
            max_words: default_max_words(),
        }
    }
}

fn default_max_words() -> usize {
    10_000_000
}

fn default_vocab_size() -> usize {
    30000
}

fn default_min_frequency() -> u64 {
    2
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

/// Train a byte-level BPE tokenizer on `texts`, counting their words on the
/// current rayon pool's threads. The result depends only on the multiset of
/// texts, not on their order or the thread count, and is what `tokenizers`'
/// BPE trainer learns from them ([`bpe`]).
pub fn train<I, S>(config: &TrainConfig, texts: I) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let counter = bpe::WordCounter::new(config.add_prefix_space, config.max_words);
    let mut texts = texts;
    std::iter::from_fn(|| {
        let chunk: Vec<S> = texts.by_ref().take(4096).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
    .par_bridge()
    .try_for_each(|chunk| counter.count(chunk.iter().map(AsRef::as_ref)))?;
    from_counts(config, counter.into_counts())
}

/// The tokenizer learnt from word counts (see [`bpe::WordCounter`]).
pub fn from_counts(config: &TrainConfig, counts: Vec<(Box<[u8]>, u64)>) -> Result<Tokenizer> {
    let learnt = bpe::learn(
        counts,
        config.vocab_size,
        config.min_frequency,
        &config.special_tokens,
    );
    let vocab: Vocab = learnt
        .vocab
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let merges = learnt
        .merges
        .iter()
        .map(|&(a, b)| {
            (
                learnt.vocab[a as usize].clone(),
                learnt.vocab[b as usize].clone(),
            )
        })
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Internal(format!("the trained BPE does not build: {e}")))?;
    // As Python's `ByteLevelBPETokenizer` sets them, so that its
    // tokenizer.json is this one.
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(
        ByteLevel::default().add_prefix_space(config.add_prefix_space),
    ));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
    let special: Vec<AddedToken> = config
        .special_tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| Error::Config(format!("special tokens: {e}")))?;
    Ok(tokenizer)
}
