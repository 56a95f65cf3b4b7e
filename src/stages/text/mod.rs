//! Text stages: byte-level BPE tokenization and sliding-window chunking.

pub mod bytelevel;
pub mod chunk;
pub mod tokenize;
