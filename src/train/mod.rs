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
//!
//! Smaller models: quantisation to int8 ([`quant`], the int8 model's file
//! [`int8`], its integer product `kernel`), channel pruning
//! ([`prune`]) and distillation ([`distill`]), run by the loop through
//! `compress`; each layer of the model is called through the forward
//! pass's [`tap`] (quantising, monitoring), its attention is
//! [`attention`], one optimiser micro-step is `step`, and [`params`] reads
//! and writes parameters by name.

pub mod attention;
mod batch;
mod checkpoint;
pub mod collective;
mod compress;
pub mod config;
mod ddp;
mod device;
pub mod distill;
mod evaluate;
pub mod int8;
mod kernel;
pub mod launch;
pub mod loader;
pub mod model;
pub mod params;
pub mod plot;
pub mod prune;
pub mod quant;
pub mod run;
pub mod schedule;
mod shape;
mod step;
pub mod tap;

pub use config::{TrainDevice, TrainFile};
pub use run::{Summary, train};
