//! Synonym replacement from WordNet, with nlpaug's `SynonymAug` parameters:
//! `ceil(aug_p * words)` words are replaced, at least `aug_min` and at most
//! `aug_max`; stopwords are never replaced; a synonym is a lemma name of
//! one of the word's synsets other than the word itself, with underscores
//! and hyphens turned into spaces, lower-cased, then capitalised like the
//! word it replaces (`Fox` gives `Dodger`, `NASA` an upper-case synonym).
//!
//! Part of speech: with Apertium's tagger output for the text, a word tagged
//! as a noun, lexical verb, adjective or adverb takes synonyms of that part
//! of speech only; function words, auxiliaries and proper nouns are never
//! replaced; a word the tagger does not know takes any part of speech, as
//! every word does without a tagger.
//!
//! Unlike nlpaug, only words that have a synonym are drawn, so a sentence
//! with any replaceable word changes; a word's own base forms are not its
//! synonyms (nlpaug turns `expects` into `expect`); and the text around the
//! replaced words (spacing, punctuation) is kept as it was. Every draw comes
//! from the generator it is given: the same seed gives the same sentence.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use rand::Rng;
use rand::seq::SliceRandom;
use regex::Regex;

use super::translate::Unit;
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
    /// Synonyms by (lower-cased word, part of speech), in shards so that
    /// threads rarely wait on each other; a shard is emptied when full.
    cache: Vec<Mutex<CacheShard>>,
}

/// Synonyms by (lower-cased word, part of speech).
type CacheShard = HashMap<(String, Option<Pos>), Arc<Vec<String>>>;

const CACHE_SHARDS: usize = 64;
const CACHE_SHARD_ENTRIES: usize = 4096;

/// Where the text came out unchanged, and why.
pub type Note = String;

impl SynonymReplacer {
    pub fn new(wordnet: Arc<WordNet>, params: SynonymParams) -> Self {
        SynonymReplacer {
            wordnet,
            params,
            cache: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// [`Self::candidates`], remembered.
    fn cached(&self, word: &str, pos: Option<Pos>) -> Arc<Vec<String>> {
        let key = (word.to_lowercase(), pos);
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.cache[h.finish() as usize % CACHE_SHARDS];
        if let Some(c) = shard.lock().expect("not poisoned").get(&key) {
            return c.clone();
        }
        let c = Arc::new(self.candidates(&key.0, pos));
        let mut map = shard.lock().expect("not poisoned");
        if map.len() >= CACHE_SHARD_ENTRIES {
            map.clear();
        }
        map.insert(key, c.clone());
        c
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
    /// as in nlpaug); never the word or one of its base forms.
    pub fn candidates(&self, word: &str, pos: Option<Pos>) -> Vec<String> {
        let lower = word.to_lowercase();
        let parts: &[Pos] = match &pos {
            Some(p) => std::slice::from_ref(p),
            None => &Pos::ALL,
        };
        let bases: Vec<String> = parts
            .iter()
            .flat_map(|&p| self.wordnet.morphy(&lower, p))
            .collect();
        let mut out = Vec::new();
        for (p, offset) in self.wordnet.synsets(&lower, pos) {
            for name in self.wordnet.lemma_names(p, offset) {
                let name_lower = name.to_lowercase();
                if name_lower == lower || bases.contains(&name_lower) {
                    continue;
                }
                out.push(name.replace(['_', '-'], " ").to_lowercase());
            }
        }
        out
    }

    /// `text` with some words replaced by synonyms, and how many; a note
    /// when nothing could be replaced. `units` is the tagger's analysis of
    /// `text`, if there is one.
    pub fn replace(
        &self,
        text: &str,
        units: Option<&[Unit]>,
        rng: &mut impl Rng,
    ) -> Result<(String, usize), Note> {
        let (words, parts): (Vec<(usize, usize)>, Vec<WordPos>) =
            match units.and_then(|u| align(text, u)) {
                Some(aligned) => aligned.into_iter().unzip(),
                None => WORD
                    .find_iter(text)
                    .map(|m| ((m.start(), m.end()), WordPos::Any))
                    .unzip(),
            };
        if words.is_empty() {
            return Err("no words to replace".into());
        }
        let want = self.count(words.len());
        let mut eligible: Vec<usize> = (0..words.len())
            .filter(|&i| {
                let w = &text[words[i].0..words[i].1];
                parts[i] != WordPos::Skip && !self.params.stopwords.contains(&w.to_lowercase())
            })
            .collect();
        eligible.shuffle(rng);
        let mut chosen: Vec<(usize, String)> = Vec::new();
        for i in eligible {
            if chosen.len() == want {
                break;
            }
            let word = &text[words[i].0..words[i].1];
            let pos = match parts[i] {
                WordPos::Only(p) => Some(p),
                _ => None,
            };
            let candidates = self.cached(word, pos);
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

/// What a tagged word may be replaced with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WordPos {
    /// Untagged or unknown to the tagger: synonyms of any part of speech.
    Any,
    Only(Pos),
    /// A function word, auxiliary or proper noun: kept.
    Skip,
}

/// The part of speech of an Apertium tag.
fn word_pos(tag: Option<&str>) -> WordPos {
    match tag {
        None => WordPos::Any,
        Some("n") => WordPos::Only(Pos::Noun),
        Some("vblex") => WordPos::Only(Pos::Verb),
        Some("adj") => WordPos::Only(Pos::Adj),
        Some("adv" | "preadv") => WordPos::Only(Pos::Adv),
        Some(_) => WordPos::Skip,
    }
}

/// The words of `text` with their parts of speech, from the tagger's
/// units found in order in the text; `None` when a unit is not where the
/// text says (the tagger changed it), and the caller does without tags.
fn align(text: &str, units: &[Unit]) -> Option<Vec<((usize, usize), WordPos)>> {
    let mut at = 0;
    let mut out = Vec::new();
    for u in units {
        if u.surface.is_empty() {
            continue;
        }
        let start = at + text[at..].find(&u.surface)?;
        let end = start + u.surface.len();
        // The skipped text holds no words the tagger left out.
        if WORD.is_match(&text[at..start]) {
            return None;
        }
        at = end;
        if WORD
            .find(&u.surface)
            .is_some_and(|m| m.start() == 0 && m.end() == u.surface.len())
        {
            out.push(((start, end), word_pos(u.tag.as_deref())));
        }
    }
    if WORD.is_match(&text[at..]) {
        return None;
    }
    Some(out)
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
                .replace(text, None, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap();
            assert!((1..=3).contains(&n), "ceil(0.3 * 9) = 3 at most: {n}");
            assert_ne!(out, text);
            assert!(out.ends_with('.'), "punctuation kept: {out}");
            // Same seed, same sentence.
            let again = r
                .replace(text, None, &mut ChaCha8Rng::seed_from_u64(seed))
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
                    None,
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
        assert!(r.replace("", None, &mut rng).is_err());
        assert!(r.replace("1234 !!!", None, &mut rng).is_err());
        assert!(r.replace("日本語のテキスト", None, &mut rng).is_err());
    }

    #[test]
    fn base_forms_are_not_synonyms() {
        let r = replacer(0.3, &[]);
        let c = r.candidates("expects", None);
        assert!(!c.is_empty() && !c.iter().any(|s| s == "expect"), "{c:?}");
    }

    #[test]
    fn tagged_words_keep_their_part_of_speech() {
        let r = replacer(1.0, &[]);
        let text = "The dog runs quickly.";
        let unit = |s: &str, t: Option<&str>| Unit {
            surface: s.into(),
            tag: t.map(str::to_string),
        };
        let units = [
            unit("The", Some("det")),
            unit("dog", Some("n")),
            unit("runs", Some("vblex")),
            unit("quickly", Some("adv")),
            unit(".", Some("sent")),
        ];
        let nouns = r.candidates("dog", Some(Pos::Noun));
        let verbs = r.candidates("runs", Some(Pos::Verb));
        let adverbs = r.candidates("quickly", Some(Pos::Adv));
        for seed in 0..30 {
            let (out, n) = r
                .replace(text, Some(&units), &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap();
            assert_eq!(n, 3, "every content word is replaced at aug_p = 1: {out}");
            assert!(out.starts_with("The "), "a determiner is kept: {out}");
            let rest = &out[4..out.len() - 1];
            // Each replacement is a synonym of its own part of speech.
            assert!(nouns.iter().any(|s| rest.starts_with(s.as_str())), "{out}");
            let after_noun = nouns
                .iter()
                .filter(|s| rest.starts_with(s.as_str()))
                .map(|s| &rest[s.len() + 1..])
                .any(|r| {
                    verbs.iter().any(|v| {
                        r.starts_with(v.as_str()) && adverbs.iter().any(|a| r[v.len() + 1..] == **a)
                    })
                });
            assert!(after_noun, "{out}");
        }
        // Units that are not in the text: no tags are used.
        let wrong = [unit("cat", Some("n"))];
        assert!(align(text, &wrong).is_none());
        assert!(
            r.replace(text, Some(&wrong), &mut ChaCha8Rng::seed_from_u64(1))
                .is_ok()
        );
    }

    #[test]
    fn case_follows_the_replaced_word() {
        assert_eq!(align_case("Fox", "dodger"), "Dodger");
        assert_eq!(align_case("FOX", "dodger"), "DODGER");
        assert_eq!(align_case("fox", "dodger"), "dodger");
        assert_eq!(align_case("iPhone", "phone"), "phone");
    }
}
