//! WordNet 3.0 read from its database files (`index.POS`, `data.POS`,
//! `POS.exc`; Debian's `wordnet-base` installs them under
//! /usr/share/wordnet), with the lookups synonym replacement needs:
//! lemmatisation as NLTK's `morphy` does it (exception lists, then one
//! round of suffix rules, keeping the forms WordNet knows), synsets of a
//! word in NLTK's order, and the lemma names of a synset.
//!
//! The index is held in memory (lemma to synset offsets); the data files
//! are read whole and each synset is parsed where its offset points, when
//! asked for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A part of speech, in WordNet's order (NLTK's `POS_LIST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pos {
    Noun,
    Verb,
    Adj,
    Adv,
}

impl Pos {
    pub const ALL: [Pos; 4] = [Pos::Noun, Pos::Verb, Pos::Adj, Pos::Adv];

    /// The suffix of its files: `index.noun`, `noun.exc`...
    fn file(self) -> &'static str {
        match self {
            Pos::Noun => "noun",
            Pos::Verb => "verb",
            Pos::Adj => "adj",
            Pos::Adv => "adv",
        }
    }

    /// morphy's suffix rules, `(ending, replacement)`, in NLTK's order.
    fn rules(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Pos::Noun => &[
                ("s", ""),
                ("ses", "s"),
                ("ves", "f"),
                ("xes", "x"),
                ("zes", "z"),
                ("ches", "ch"),
                ("shes", "sh"),
                ("men", "man"),
                ("ies", "y"),
            ],
            Pos::Verb => &[
                ("s", ""),
                ("ies", "y"),
                ("es", "e"),
                ("es", ""),
                ("ed", "e"),
                ("ed", ""),
                ("ing", "e"),
                ("ing", ""),
            ],
            Pos::Adj => &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
            Pos::Adv => &[],
        }
    }

    fn at(self) -> usize {
        self as usize
    }
}

/// The WordNet database of one directory.
pub struct WordNet {
    dir: PathBuf,
    /// Per part of speech: lemma to synset offsets, in the index's order.
    index: [HashMap<String, Vec<u32>>; 4],
    /// Per part of speech: irregular form to base forms.
    exceptions: [HashMap<String, Vec<String>>; 4],
    /// Per part of speech: the data file.
    data: [Vec<u8>; 4],
}

impl WordNet {
    /// Read the database in `dir`; the error names the file.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let read = |name: String| {
            let path = dir.join(&name);
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let mut index: [HashMap<String, Vec<u32>>; 4] = Default::default();
        let mut exceptions: [HashMap<String, Vec<String>>; 4] = Default::default();
        let mut data: [Vec<u8>; 4] = Default::default();
        for pos in Pos::ALL {
            let name = format!("index.{}", pos.file());
            let text = read(name.clone())?;
            let text = String::from_utf8_lossy(&text);
            for (n, line) in text.lines().enumerate() {
                // The license is indented; entries are not.
                if line.starts_with(' ') || line.is_empty() {
                    continue;
                }
                let bad = || format!("{}: line {} is not an index entry", name, n + 1);
                let f: Vec<&str> = line.split_ascii_whitespace().collect();
                // lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt offsets
                let p_cnt: usize = f.get(3).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let synsets: usize = f.get(2).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let first = 4 + p_cnt + 2;
                let offsets = f
                    .get(first..first + synsets)
                    .ok_or_else(bad)?
                    .iter()
                    .map(|o| o.parse::<u32>().map_err(|_| bad()))
                    .collect::<Result<Vec<_>, _>>()?;
                index[pos.at()].insert(f[0].to_string(), offsets);
            }
            let exc = read(format!("{}.exc", pos.file()))?;
            for line in String::from_utf8_lossy(&exc).lines() {
                let mut f = line.split_ascii_whitespace();
                if let Some(form) = f.next() {
                    exceptions[pos.at()].insert(form.to_string(), f.map(str::to_string).collect());
                }
            }
            data[pos.at()] = read(format!("data.{}", pos.file()))?;
        }
        Ok(WordNet {
            dir: dir.to_path_buf(),
            index,
            exceptions,
            data,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The base forms of `form` WordNet has as `pos`, as NLTK's `_morphy`:
    /// the form itself, then its exceptions or else one round of suffix
    /// rules, keeping those in the index, each once.
    pub fn morphy(&self, form: &str, pos: Pos) -> Vec<String> {
        let mut candidates = vec![form.to_string()];
        match self.exceptions[pos.at()].get(form) {
            Some(bases) => candidates.extend(bases.iter().cloned()),
            None => candidates.extend(pos.rules().iter().filter_map(|(old, new)| {
                form.strip_suffix(old).map(|stem| format!("{stem}{new}"))
            })),
        }
        let mut out: Vec<String> = Vec::new();
        for c in candidates {
            if self.index[pos.at()].contains_key(&c) && !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    /// The synsets of `word` (lower-cased first) as `(pos, offset)`, in
    /// NLTK's order: parts of speech in order (all when `pos` is `None`),
    /// then each base form, then the index's order of senses.
    pub fn synsets(&self, word: &str, pos: Option<Pos>) -> Vec<(Pos, u32)> {
        let word = word.to_lowercase();
        let parts: &[Pos] = match &pos {
            Some(p) => std::slice::from_ref(p),
            None => &Pos::ALL,
        };
        let mut out = Vec::new();
        for &p in parts {
            for form in self.morphy(&word, p) {
                for &offset in &self.index[p.at()][&form] {
                    out.push((p, offset));
                }
            }
        }
        out
    }

    /// The lemma names of a synset, as the data file spells them
    /// (underscores for spaces; an adjective's marker such as `(a)`
    /// removed); empty when the offset is not a synset.
    pub fn lemma_names(&self, pos: Pos, offset: u32) -> Vec<String> {
        let data = &self.data[pos.at()];
        let Some(rest) = data.get(offset as usize..) else {
            return Vec::new();
        };
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        // offset lex_filenum ss_type w_cnt (word lex_id){w_cnt} ...
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.first().and_then(|o| o.parse::<u32>().ok()) != Some(offset) {
            return Vec::new();
        }
        let count = f
            .get(3)
            .and_then(|c| usize::from_str_radix(c, 16).ok())
            .unwrap_or(0);
        (0..count)
            .filter_map(|i| f.get(4 + 2 * i))
            .map(|w| match w.find('(') {
                Some(i) if w.ends_with(')') => w[..i].to_string(),
                _ => w.to_string(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's wordnet-base, which scripts/setup.sh installs.
    fn wordnet() -> WordNet {
        WordNet::open(Path::new("/usr/share/wordnet"))
            .expect("WordNet 3.0 in /usr/share/wordnet (scripts/setup.sh installs wordnet-base)")
    }

    fn pos_of(p: &str) -> Pos {
        match p {
            "n" => Pos::Noun,
            "v" => Pos::Verb,
            "a" | "s" => Pos::Adj,
            _ => Pos::Adv,
        }
    }

    /// Synsets, base forms and lemma names equal NLTK's on the same files
    /// (fixtures/text/wordnet_reference.json, recorded by
    /// fixtures/make_wordnet_reference.py).
    #[test]
    fn lookups_equal_nltk() {
        let wn = wordnet();
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("../../fixtures/text/wordnet_reference.json"))
                .unwrap();
        let words = reference["words"].as_object().unwrap();
        assert!(words.len() > 50);
        for (word, want) in words {
            let got: Vec<serde_json::Value> = wn
                .synsets(word, None)
                .into_iter()
                .map(|(p, o)| serde_json::json!([o, wn.lemma_names(p, o)]))
                .collect();
            let want_synsets: Vec<serde_json::Value> = want["synsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| serde_json::json!([s[0], s[2]]))
                .collect();
            assert_eq!(got, want_synsets, "synsets of `{word}`");
            for (p, forms) in want["morphy"].as_object().unwrap() {
                let forms: Vec<String> = serde_json::from_value(forms.clone()).unwrap();
                assert_eq!(wn.morphy(word, pos_of(p)), forms, "morphy({word}, {p})");
            }
        }
    }

    #[test]
    fn a_missing_directory_is_named() {
        let e = WordNet::open(Path::new("/nonexistent/wordnet"))
            .err()
            .unwrap();
        assert!(e.contains("/nonexistent/wordnet/index.noun"), "{e}");
    }
}
