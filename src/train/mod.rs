//! `kiln train`, the bundled trainer: the training file and its checks
//! ([`config`]); the loader that streams a kiln dataset's Arrow shards in a
//! (seed, epoch) order, split across ranks and resumable at any batch
//! ([`loader`]); the dataset's columns and classes as the model reads them
//! (`shape`) and its batches as tensors, mixed online (`batch`); the fusion
//! model on burn ([`model`]); the device and precision (`device`); the
//! warmup + cosine learning-rate schedule ([`schedule`]); checkpoints
//! (`checkpoint`); the loop with its metrics ([`run`]) and the held-out
//! evaluation (`evaluate`); and data parallelism across processes and
//! machines: the ranks' link ([`collective`]), `--nproc` ([`launch`]) and
//! the exchange of gradients and weights, with ZeRO stage 1 (`ddp`).

mod batch;
mod checkpoint;
pub mod collective;
pub mod config;
mod ddp;
mod device;
mod evaluate;
pub mod launch;
pub mod loader;
pub mod model;
pub mod plot;
pub mod run;
pub mod schedule;
mod shape;

pub use config::{TrainDevice, TrainFile};
pub use run::{Summary, train};
