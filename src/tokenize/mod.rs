//! The byte-level BPE library under the `tokenize` stage: loading a
//! `tokenizer.json`, training one with `tokenizers`' BPE trainer, domain
//! terms added as whole tokens, and GPT-2's pre-tokenization split done
//! without `tokenizers`' string machinery ([`bytelevel`]).

pub mod bytelevel;

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
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
