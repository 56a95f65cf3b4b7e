//! Training a byte-level BPE: the words of the corpus counted on all cores
//! with kiln's own GPT-2 split ([`WordCounter`]), then the merges learnt
//! from the counts ([`learn`]) by the rule of `tokenizers`' `BpeTrainer`,
//! so that the vocabulary and the merges, in order, are the ones
//! `tokenizers` (and Python's `ByteLevelBPETokenizer().train_from_iterator`)
//! learn from the same texts.
//!
//! The rule, as `tokenizers` 0.23 applies it: special tokens take the first
//! ids, then the 256 byte characters in code point order; every distinct
//! word is a sequence of those ids; each step takes the pair with the
//! highest count (ties: the smallest pair of ids), stops below
//! `min_frequency` or at `vocab_size`, and merges the pair in the words an
//! entry of its priority queue lists. Its quirks are kept, because they
//! decide the merges: a merged pair's own count is not lowered (only
//! overlaps such as `a a a` lower it), an entry lists only the words whose
//! occurrences of the pair were created since the last entry, and a pair
//! found again later is merged again (its second merge is written once, at
//! its later rank, as `tokenizers`' merge map keeps it).
//!
//! Differences, none of which changes a result `tokenizers` gives: pair
//! counts are 64-bit (`tokenizers` counts in `i32`, which overflows past
//! 2^31 occurrences of a pair), and the merge loop runs on one thread over
//! flat arrays instead of a parallel iterator over hash sets a merge.
//!
//! Memory grows with the distinct words, never with the texts: counting
//! keeps each word once (its bytes, a count, the map's share), and learning
//! keeps each word's symbols and, for each pair, the words holding it. The
//! peak, while learning, is about 200 bytes a distinct word (measured: 420
//! MB for 2 million words of 6 to 10 letters). The number of distinct words
//! is bounded by `max_words`: a corpus with more is refused with the key to
//! raise, because keeping only some words would make the tokenizer depend
//! on the order the input was read in.

use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

use super::bytelevel;
use crate::error::{Error, Result};

/// Shards of the word counts, so that threads rarely wait for each other.
const SHARDS: usize = 64;

/// Words (raw bytes) and their counts.
type Counts = FxHashMap<Box<[u8]>, u64>;

/// Counts the GPT-2 splits of texts, from any number of threads at once.
pub struct WordCounter {
    shards: Box<[Mutex<Counts>]>,
    distinct: AtomicUsize,
    max_words: usize,
    add_prefix_space: bool,
}

impl WordCounter {
    pub fn new(add_prefix_space: bool, max_words: usize) -> Self {
        WordCounter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            distinct: AtomicUsize::new(0),
            max_words,
            add_prefix_space,
        }
    }

    /// Count the words of `texts` (one thread's share: call it from as many
    /// threads as there are). Refused once the corpus has more than
    /// `max_words` distinct words; whether that happens does not depend on
    /// the order of the texts.
    pub fn count<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Result<()> {
        // Counted here first, so that a common word takes a shard's lock
        // once a call, not once an occurrence.
        let mut local: FxHashMap<&'a [u8], u64> = FxHashMap::default();
        // The first words of prefixed texts, the only ones not in `texts`.
        let mut firsts: Counts = Counts::default();
        let mut prefixed = String::new();
        for text in texts {
            if bytelevel::prefixes(text, self.add_prefix_space) {
                prefixed.clear();
                prefixed.push(' ');
                prefixed.push_str(text);
                let base = prefixed.as_ptr() as usize;
                bytelevel::split(&prefixed, |w| {
                    let at = w.as_ptr() as usize - base;
                    if at == 0 {
                        match firsts.get_mut(w.as_bytes()) {
                            Some(n) => *n += 1,
                            None => {
                                firsts.insert(w.as_bytes().into(), 1);
                            }
                        }
                    } else {
                        let w = &text.as_bytes()[at - 1..at - 1 + w.len()];
                        *local.entry(w).or_default() += 1;
                    }
                });
            } else {
                bytelevel::split(text, |w| *local.entry(w.as_bytes()).or_default() += 1);
            }
        }
        self.flush(
            local
                .into_iter()
                .chain(firsts.iter().map(|(w, &n)| (&**w, n))),
        )
    }

    fn flush<'w>(&self, words: impl Iterator<Item = (&'w [u8], u64)>) -> Result<()> {
        let mut by_shard: Vec<Vec<(&[u8], u64)>> = vec![Vec::new(); SHARDS];
        for (w, n) in words {
            by_shard[shard_of(w)].push((w, n));
        }
        let mut added = 0;
        for (shard, words) in self.shards.iter().zip(by_shard) {
            if words.is_empty() {
                continue;
            }
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (w, n) in words {
                match map.get_mut(w) {
                    Some(c) => *c += n,
                    None => {
                        map.insert(w.into(), n);
                        added += 1;
                    }
                }
            }
        }
        let distinct = self.distinct.fetch_add(added, Ordering::Relaxed) + added;
        if distinct > self.max_words {
            return Err(Error::Execution(format!(
                "the corpus has more than {} distinct words, the bound on the tokenizer trainer's \
                 memory; raise [stages.train] max_words (each takes about 200 bytes)",
                self.max_words
            )));
        }
        Ok(())
    }

    /// The counts, sorted by word.
    pub fn into_counts(self) -> Vec<(Box<[u8]>, u64)> {
        let mut all = Vec::with_capacity(self.distinct.load(Ordering::Relaxed));
        for shard in self.shards {
            all.extend(shard.into_inner().unwrap_or_else(|e| e.into_inner()));
        }
        all.sort_unstable();
        all
    }
}

/// FNV-1a, independent of the maps' own hash, so a shard's keys still
/// spread over its table.
fn shard_of(word: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for &b in word {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h as usize % SHARDS
}

type Pair = (u32, u32);

/// An entry of the merge queue: a pair, its count when queued, and the
/// words to merge it in.
struct Queued {
    count: u64,
    pair: Pair,
    words: Vec<u32>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.pair == other.pair
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// The highest count first; among equal counts the smallest pair.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.count
            .cmp(&other.count)
            .then_with(|| other.pair.cmp(&self.pair))
    }
}

/// What training learnt: the tokens by id and the merges by rank.
pub struct Learnt {
    pub vocab: Vec<String>,
    pub merges: Vec<Pair>,
}

/// The words, flat: word `i` is `symbols[start[i]..start[i] + len[i]]`,
/// shrinking in place as pairs merge.
struct Words {
    symbols: Vec<u32>,
    start: Vec<u32>,
    len: Vec<u32>,
}

impl Words {
    /// Merge `pair` into `new` in word `i`, calling `change` with each pair
    /// that loses (-1) or gains (+1) an occurrence, as `tokenizers`'
    /// `Word::merge` reports them.
    fn merge(&mut self, i: usize, (a, b): Pair, new: u32, mut change: impl FnMut(Pair, i64)) {
        let start = self.start[i] as usize;
        let n = self.len[i] as usize;
        let s = &mut self.symbols[start..start + n];
        let (mut r, mut w) = (0, 0);
        while r < n {
            if s[r] == a && r + 1 < n && s[r + 1] == b {
                if w > 0 {
                    change((s[w - 1], a), -1);
                    change((s[w - 1], new), 1);
                }
                s[w] = new;
                r += 2;
                if r < n {
                    change((b, s[r]), -1);
                    change((new, s[r]), 1);
                }
            } else {
                s[w] = s[r];
                r += 1;
            }
            w += 1;
        }
        self.len[i] = w as u32;
    }
}

/// Learn the vocabulary and the merges from word counts (the words as raw
/// bytes; any order). The counts are dropped once the words are laid out.
pub fn learn(
    counts: Vec<(Box<[u8]>, u64)>,
    vocab_size: usize,
    min_frequency: u64,
    special_tokens: &[String],
) -> Learnt {
    let mut ids: FxHashMap<String, u32> = FxHashMap::default();
    let mut vocab: Vec<String> = Vec::with_capacity(vocab_size);
    let add = |token: String, ids: &mut FxHashMap<String, u32>, vocab: &mut Vec<String>| {
        let next = vocab.len() as u32;
        *ids.entry(token.clone()).or_insert_with(|| {
            vocab.push(token);
            next
        })
    };
    for t in special_tokens {
        add(t.clone(), &mut ids, &mut vocab);
    }
    // The alphabet: every byte's character, in code point order.
    let mut chars: Vec<(char, u8)> = (0..=255u8).map(|b| (bytelevel::byte_char(b), b)).collect();
    chars.sort_unstable();
    let mut byte_id = [0u32; 256];
    for (c, b) in chars {
        byte_id[b as usize] = add(c.to_string(), &mut ids, &mut vocab);
    }

    let total: usize = counts.iter().map(|(w, _)| w.len()).sum();
    let mut words = Words {
        symbols: Vec::with_capacity(total),
        start: Vec::with_capacity(counts.len()),
        len: Vec::with_capacity(counts.len()),
    };
    let mut weight: Vec<i64> = Vec::with_capacity(counts.len());
    for (w, n) in counts {
        words.start.push(words.symbols.len() as u32);
        words.len.push(w.len() as u32);
        words.symbols.extend(w.iter().map(|&b| byte_id[b as usize]));
        weight.push(n as i64);
    }

    let mut pair_counts: FxHashMap<Pair, i64> = FxHashMap::default();
    let mut where_to: FxHashMap<Pair, Vec<u32>> = FxHashMap::default();
    for (i, &n) in weight.iter().enumerate() {
        let (s, l) = (words.start[i] as usize, words.len[i] as usize);
        for p in words.symbols[s..s + l].windows(2) {
            let pair = (p[0], p[1]);
            *pair_counts.entry(pair).or_default() += n;
            let at = where_to.entry(pair).or_default();
            if at.last() != Some(&(i as u32)) {
                at.push(i as u32);
            }
        }
    }
    let mut queue = BinaryHeap::with_capacity(pair_counts.len());
    let requeue = |where_to: &mut FxHashMap<Pair, Vec<u32>>,
                   pair_counts: &FxHashMap<Pair, i64>,
                   queue: &mut BinaryHeap<Queued>| {
        for (pair, words) in where_to.drain() {
            let count = pair_counts[&pair];
            if count > 0 {
                queue.push(Queued {
                    count: count as u64,
                    pair,
                    words,
                });
            }
        }
    };
    requeue(&mut where_to, &pair_counts, &mut queue);

    let mut merges: Vec<Pair> = Vec::new();
    while ids.len() < vocab_size {
        let Some(mut top) = queue.pop() else { break };
        let now = pair_counts[&top.pair] as u64;
        if top.count != now {
            top.count = now;
            queue.push(top);
            continue;
        }
        if top.count < 1 || min_frequency > top.count {
            break;
        }
        let token = format!(
            "{}{}",
            vocab[top.pair.0 as usize], vocab[top.pair.1 as usize]
        );
        let new = add(token, &mut ids, &mut vocab);
        merges.push(top.pair);
        for &i in &top.words {
            let i = i as usize;
            words.merge(i, top.pair, new, |pair, change| {
                *pair_counts.entry(pair).or_default() += change * weight[i];
                if change > 0 {
                    let at = where_to.entry(pair).or_default();
                    if at.last() != Some(&(i as u32)) {
                        at.push(i as u32);
                    }
                }
            });
        }
        requeue(&mut where_to, &pair_counts, &mut queue);
    }

    // A pair merged twice keeps its later rank, as in `tokenizers`' map.
    let mut last: FxHashMap<Pair, usize> = FxHashMap::default();
    for (rank, &pair) in merges.iter().enumerate() {
        last.insert(pair, rank);
    }
    let merges = match last.len() == merges.len() {
        true => merges,
        false => merges
            .iter()
            .enumerate()
            .filter(|&(rank, pair)| last[pair] == rank)
            .map(|(_, &pair)| pair)
            .collect(),
    };
    Learnt { vocab, merges }
}

#[cfg(test)]
mod tests {
    use crate::tokenize::{TrainConfig, train};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, Tokenizer};

    /// `tokenizers`' own trainer, set up as Python's `ByteLevelBPETokenizer`.
    fn reference(config: &TrainConfig, texts: &[String]) -> Tokenizer {
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(
            ByteLevel::default().add_prefix_space(config.add_prefix_space),
        ));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        tokenizer.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
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
        tokenizer.train(&mut trainer, texts.iter()).unwrap();
        tokenizer
    }

    fn check(config: &TrainConfig, texts: &[String]) {
        let ours = train(config, texts.iter())
            .unwrap()
            .to_string(true)
            .unwrap();
        let want = reference(config, texts).to_string(true).unwrap();
        assert!(ours == want, "{config:?} on {texts:?}:\n{ours}\n{want}");
    }

    #[test]
    fn the_same_tokenizer_json_as_tokenizers_trainer() {
        let text: Vec<String> = [
            "the kiln fires clay, the kiln fires pots",
            "  leading and  double  spaces\tand tabs\n",
            "unicode: café, naïve, 東京, emoji 🔥🔥 e\u{301}",
            "aaaa aaa aa a aaaaaaa abab ababab baba",
            "numbers 123 4.5e6 1234 12345 123456",
            "I'm sure they'll've it's 'quoted' don't",
            "",
            " the",
            "<s> special tokens <s> and ! marks!!",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for prefix in [false, true] {
            for (vocab, min, special) in [
                (300, 1, vec![]),
                (
                    400,
                    1,
                    vec!["<s>".to_string(), "!".to_string(), "<s>".to_string()],
                ),
                (280, 2, vec!["<pad>".to_string()]),
                (5000, 1, vec![]),
            ] {
                let mut config = TrainConfig::new(vocab, min, special);
                config.add_prefix_space = prefix;
                check(&config, &text);
            }
        }
    }

    /// Small alphabets make the overlapping pairs (`a a a`), the pairs
    /// formed again after their merge and the ties that decide `tokenizers`'
    /// merges frequent.
    #[test]
    fn the_same_merges_on_random_small_alphabet_corpora() {
        let alphabet: Vec<char> = "aab b c ' \n1é".chars().collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..1000 {
            let texts: Vec<String> = (0..1 + next() % 12)
                .map(|_| {
                    (0..next() % 40)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                        .collect()
                })
                .collect();
            let mut config = TrainConfig::new(257 + (next() % 60) as usize, 1 + next() % 3, vec![]);
            config.add_prefix_space = round % 2 == 1;
            check(&config, &texts);
        }
    }

    #[test]
    fn more_distinct_words_than_the_bound_is_refused() {
        // 200 distinct words: "qba", " qbb", ...
        let word = |n: u32| -> String {
            let letters = [n / 26 % 26, n % 26].map(|d| char::from(b'a' + d as u8));
            format!("q{}{}", letters[0], letters[1])
        };
        let texts: Vec<String> = (0..100)
            .map(|i| format!("{} {}", word(i), word(i + 100)))
            .collect();
        let mut config = TrainConfig::new(300, 1, vec![]);
        config.max_words = 150;
        let err = train(&config, texts.iter()).unwrap_err().to_string();
        assert!(err.contains("max_words"), "{err}");
        config.max_words = 200;
        train(&config, texts.iter()).unwrap();
    }
}
