//! Text stages: byte-level BPE tokenization and sliding-window chunking.

pub mod chunk;
pub mod tokenize;
