//! Text stages: byte-level BPE tokenization and sliding-window chunking;
//! `wordnet` reads WordNet 3.0 for synonym replacement.

pub mod bytelevel;
pub mod chunk;
pub mod tokenize;
pub mod wordnet;
