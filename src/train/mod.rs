//! The bundled trainer's building blocks: the loader that streams a kiln
//! dataset's Arrow shards in a (seed, epoch) order, split across ranks and
//! resumable at any batch ([`loader`]), and the warmup + cosine learning-rate
//! schedule ([`schedule`]). The model, optimiser and `kiln train` come on
//! top of these.

pub mod loader;
pub mod schedule;
