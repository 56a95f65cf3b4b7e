//! Byte-level BPE's pre-tokenization (GPT-2's split regex and byte-to-char
//! mapping), done without building a `PreTokenizedString`: the same splits
//! and ids as `tokenizers`, several times faster.
//!
//! GPT-2's pattern ends in `\s+(?!\S)|\s+`, a look-ahead that needs a
//! backtracking engine. Here the pattern without the look-ahead runs on the
//! `regex` crate's automata and the look-ahead is emulated: a run of
//! whitespace followed by a non-space gives its last character back to the
//! next split, which is exactly what `\s+(?!\S)` does.

use std::sync::LazyLock;

use regex::Regex;

static SPLIT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
        .expect("valid regex")
});

/// Call `f` with each split of `text` under GPT-2's pre-tokenization regex.
pub fn split<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let mut pos = 0;
    while pos < text.len() {
        // Every character matches some alternative, so the match starts here.
        let m = SPLIT
            .find_at(text, pos)
            .expect("the pattern matches any character");
        debug_assert_eq!(m.start(), pos);
        let mut end = m.end();
        let s = m.as_str();
        if end < text.len() && s.chars().all(char::is_whitespace) {
            let last = s.chars().next_back().expect("non-empty match").len_utf8();
            if s.len() > last {
                end -= last;
            }
        }
        f(&text[pos..end]);
        pos = end;
    }
}

/// GPT-2's map of bytes to printable characters.
static BYTE_CHARS: LazyLock<[char; 256]> = LazyLock::new(|| {
    let mut table = ['\0'; 256];
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut n = 0;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid char")
        };
    }
    table
});

/// Whether `ByteLevel(add_prefix_space)` puts a space before `text`: when
/// it does not start with one, and is not empty (`tokenizers` has no split
/// to prefix in an empty text).
pub fn prefixes(text: &str, add_prefix_space: bool) -> bool {
    add_prefix_space && !text.is_empty() && !text.starts_with(' ')
}

/// The character GPT-2's byte-level alphabet writes byte `b` as.
pub fn byte_char(b: u8) -> char {
    BYTE_CHARS[b as usize]
}

/// A split as the model sees it: every byte mapped to its character.
pub fn map_bytes(split: &str, out: &mut String) {
    out.clear();
    out.extend(split.bytes().map(|b| BYTE_CHARS[b as usize]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn reference(text: &str) -> Vec<String> {
        let mut pre = PreTokenizedString::from(text);
        ByteLevel::new(false, true, true)
            .pre_tokenize(&mut pre)
            .unwrap();
        pre.get_splits(OffsetReferential::Original, OffsetType::None)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect()
    }

    fn ours(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut mapped = String::new();
        split(text, |s| {
            map_bytes(s, &mut mapped);
            out.push(mapped.clone());
        });
        out
    }

    #[test]
    fn same_splits_as_tokenizers_on_tricky_text() {
        for text in [
            "",
            " ",
            "hello world",
            "  two  spaces   three\t\ttabs\n\nnewlines \n x",
            "trailing spaces   ",
            "I'm sure they'll've it's 'quoted' don't",
            "numbers 123 4.5e6 ١٢٣ Ⅻ ½",
            "punct!!! ...?? (a) [b] {c} — «d» “e”",
            "unicode café naïve 東京タワー 한국어 emoji 🔥🔥 e\u{301}",
            "mixed\u{a0}nbsp\u{2003}em\u{3000}ideographic",
            "\r\nwindows\r\nlines\r\n",
            "a\u{200b}zero width",
        ] {
            assert_eq!(ours(text), reference(text), "{text:?}");
        }
    }

    #[test]
    fn same_splits_on_random_text() {
        let alphabet: Vec<char> = "ab Z9 '\t\n.,!\u{a0}é東🔥١\u{301}-_sStTdDmMlLrevRV"
            .chars()
            .collect();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            assert_eq!(ours(&text), reference(&text), "{text:?}");
        }
    }
}
