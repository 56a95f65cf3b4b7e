//! Text stages: byte-level BPE tokenization, sliding-window chunking, and
//! augmentation (WordNet synonyms, back-translation) before them.

pub mod augment;
pub mod bytelevel;
pub mod chunk;
pub mod seq2seq;
pub mod synonym;
pub mod tokenize;
pub mod translate;
pub mod wordnet;
