//! Text stages: augmentation (WordNet synonyms, back-translation) before
//! tokenization, byte-level BPE tokenization, then sliding-window chunking
//! or a length filter.

pub mod augment;
pub mod chunk;
pub mod tokenize;
