//! Synonym replacement from WordNet, with nlpaug's `SynonymAug` parameters:
//! `ceil(aug_p * words)` words are replaced, at least `aug_min` and at most
//! `aug_max`; stopwords are never replaced; a synonym is a lemma name of
//! one of the word's synsets other than the word itself, with underscores
//! and hyphens turned into spaces, lower-cased, then capitalised like the
//! word it replaces (`Fox` gives `Dodger`, `NASA` an upper-case synonym).
//!
//! Unlike nlpaug, only words that have a synonym are drawn, so a sentence
//! with any replaceable word changes; and the text around the replaced
//! words (spacing, punctuation) is kept as it was. Every draw comes from the
//! generator it is given: the same seed gives the same sentence.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use rand::Rng;
use rand::seq::SliceRandom;
use regex::Regex;

use super::wordnet::{Pos, WordNet};

/// A word: letters, with inner apostrophes or hyphens (`don't`, `well-known`).
static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\p{L}+(?:['’-]\p{L}+)*").expect("valid regex"));

/// What the user set, checked.
#[derive(Debug, Clone)]
pub struct SynonymParams {
    pub aug_p: f64,
    pub aug_min: usize,
    pub aug_max: Option<usize>,
    /// Lower-cased.
    pub stopwords: HashSet<String>,
}

pub struct SynonymReplacer {
    wordnet: Arc<WordNet>,
    params: SynonymParams,
}

/// Where the text came out unchanged, and why.
pub type Note = String;

impl SynonymReplacer {
    pub fn new(wordnet: Arc<WordNet>, params: SynonymParams) -> Self {
        SynonymReplacer { wordnet, params }
    }

    /// How many words of `n` to replace.
    fn count(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let p = &self.params;
        let mut c = (p.aug_p * n as f64).ceil() as usize;
        c = c.max(p.aug_min);
        if let Some(max) = p.aug_max {
            c = c.min(max);
        }
        c
    }

    /// The synonyms of `word` (any part of speech, or `pos`), in WordNet's
    /// order, repeats kept (a lemma in several synsets is drawn more often,
    /// as in nlpaug).
    pub fn candidates(&self, word: &str, pos: Option<Pos>) -> Vec<String> {
        let lower = word.to_lowercase();
        let mut out = Vec::new();
        for (p, offset) in self.wordnet.synsets(&lower, pos) {
            for name in self.wordnet.lemma_names(p, offset) {
                if name.to_lowercase() == lower {
                    continue;
                }
                out.push(name.replace(['_', '-'], " ").to_lowercase());
            }
        }
        out
    }

    /// `text` with some words replaced by synonyms, and how many; a note
    /// when nothing could be replaced.
    pub fn replace(&self, text: &str, rng: &mut impl Rng) -> Result<(String, usize), Note> {
        let words: Vec<(usize, usize)> =
            WORD.find_iter(text).map(|m| (m.start(), m.end())).collect();
        if words.is_empty() {
            return Err("no words to replace".into());
        }
        let want = self.count(words.len());
        let mut eligible: Vec<usize> = (0..words.len())
            .filter(|&i| {
                let w = &text[words[i].0..words[i].1];
                !self.params.stopwords.contains(&w.to_lowercase())
            })
            .collect();
        eligible.shuffle(rng);
        let mut chosen: Vec<(usize, String)> = Vec::new();
        for i in eligible {
            if chosen.len() == want {
                break;
            }
            let word = &text[words[i].0..words[i].1];
            let candidates = self.candidates(word, None);
            if candidates.is_empty() {
                continue;
            }
            let pick = &candidates[rng.random_range(0..candidates.len())];
            chosen.push((i, align_case(word, pick)));
        }
        if chosen.is_empty() {
            return Err("no word has a WordNet synonym".into());
        }
        chosen.sort_by_key(|(i, _)| *i);
        let mut out = String::with_capacity(text.len() + 16);
        let mut at = 0;
        for (i, replacement) in &chosen {
            let (start, end) = words[*i];
            out.push_str(&text[at..start]);
            out.push_str(replacement);
            at = end;
        }
        out.push_str(&text[at..]);
        Ok((out, chosen.len()))
    }
}

/// `synonym` (lower case) capitalised like `word`: `Fox` capitalises it,
/// `FOX` upper-cases it, anything else leaves it.
fn align_case(word: &str, synonym: &str) -> String {
    let mut chars = word.chars();
    let first_upper = chars.next().is_some_and(char::is_uppercase);
    let rest: Vec<char> = chars.collect();
    let all_upper = first_upper && !rest.is_empty() && rest.iter().all(|c| !c.is_lowercase());
    if all_upper {
        return synonym.to_uppercase();
    }
    if first_upper && rest.iter().all(|c| !c.is_uppercase()) {
        let mut s = synonym.chars();
        return match s.next() {
            Some(f) => f.to_uppercase().chain(s).collect(),
            None => String::new(),
        };
    }
    synonym.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::path::Path;

    fn replacer(aug_p: f64, stopwords: &[&str]) -> SynonymReplacer {
        let wn = WordNet::open(Path::new("/usr/share/wordnet"))
            .expect("WordNet 3.0 in /usr/share/wordnet (scripts/setup.sh installs wordnet-base)");
        SynonymReplacer::new(
            Arc::new(wn),
            SynonymParams {
                aug_p,
                aug_min: 1,
                aug_max: Some(10),
                stopwords: stopwords.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    #[test]
    fn replaces_with_wordnet_synonyms_and_keeps_the_rest() {
        let r = replacer(0.3, &[]);
        let text = "The quick brown fox jumps over the lazy dog.";
        for seed in 0..50 {
            let (out, n) = r
                .replace(text, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap();
            assert!((1..=3).contains(&n), "ceil(0.3 * 9) = 3 at most: {n}");
            assert_ne!(out, text);
            assert!(out.ends_with('.'), "punctuation kept: {out}");
            // Same seed, same sentence.
            let again = r
                .replace(text, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap();
            assert_eq!(out, again.0);
        }
    }

    #[test]
    fn candidates_are_nltk_lemma_names_without_the_word() {
        let r = replacer(0.3, &[]);
        let c = r.candidates("dog", None);
        // dog.n.01: dog, domestic_dog, Canis_familiaris; multi-word lemmas
        // get spaces; the word itself never comes back.
        assert_eq!(&c[..2], &["domestic dog", "canis familiaris"]);
        assert!(!c.iter().any(|s| s == "dog"));
        assert!(r.candidates("kilnzzz", None).is_empty());
    }

    #[test]
    fn stopwords_are_never_replaced() {
        let r = replacer(1.0, &["quick", "brown", "fox", "jumps", "lazy", "dog"]);
        for seed in 0..20 {
            let (out, _) = r
                .replace(
                    "quick brown fox jumps over lazy dog",
                    &mut ChaCha8Rng::seed_from_u64(seed),
                )
                .unwrap();
            assert!(
                out.starts_with("quick brown fox jumps ") && out.ends_with(" lazy dog"),
                "{out}"
            );
        }
    }

    #[test]
    fn nothing_to_replace_is_a_note() {
        let r = replacer(0.3, &[]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(r.replace("", &mut rng).is_err());
        assert!(r.replace("1234 !!!", &mut rng).is_err());
        assert!(r.replace("日本語のテキスト", &mut rng).is_err());
    }

    #[test]
    fn case_follows_the_replaced_word() {
        assert_eq!(align_case("Fox", "dodger"), "Dodger");
        assert_eq!(align_case("FOX", "dodger"), "DODGER");
        assert_eq!(align_case("fox", "dodger"), "dodger");
        assert_eq!(align_case("iPhone", "phone"), "phone");
    }
}
