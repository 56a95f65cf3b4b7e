//! `kiln train`, the bundled trainer: the loader that streams a kiln
//! dataset's Arrow shards in a (seed, epoch) order, split across ranks and
//! resumable at any batch ([`loader`]); the fusion model on burn
//! ([`model`]); the warmup + cosine learning-rate schedule ([`schedule`]);
//! and the loop with its checkpoints and metrics ([`run`]).

pub mod loader;
pub mod model;
pub mod plot;
pub mod run;
pub mod schedule;
