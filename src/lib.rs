//! kiln builds datasets for machine learning from raw files.
//!
//! ```text
//! pipeline file --config--> Pipeline (inputs resolved, stages built, schemas checked)
//!   --plan--> tasks (byte ranges / row groups of the inputs, frozen in .kiln/plan.json)
//!   per task, on worker threads:
//!     source reader --batches--> [sql] --> stages ---------------------> shard writer
//!          |                        \__________ rejects __________/        |
//!          +--> rejects (bad UTF-8, bad JSON, over the limits, ...)        |
//!     text stages:  [augment_text] --> tokenize --> [chunk]
//!     image stages: decode_image --> resize_image --> [image_features] --> [mix]
//!                   --> encode_image | to_tensor   (plus tokenize for captions)
//!     task marker (shards, rows, sha256, counts) written last <------------+
//!   all markers --commit--> data-*-of-*.arrow, rejects.arrow, dataset_info.json,
//!                           state.json, manifest.json
//!
//! kiln train: dataset shards --loader (seed, epoch order; exact resume)--> batches
//!   --> fusion model (burn) --> AdamW, warmup + cosine --> checkpoints, metrics.jsonl
//! ```
//!
//! Contracts every stage keeps:
//! * a bad record is a reject with its sample id, source, position, stage,
//!   kind and message, never an error and never silently dropped:
//!   `samples_in = samples_out + rejected + filtered`;
//! * output depends only on the plan and the seed: same input, pipeline and
//!   seed give the same bytes at any thread count;
//! * a task's marker is written after its shards, the manifest after every
//!   marker, so a killed run resumes with at most the unfinished tasks redone.

pub mod config;
pub mod engine;
pub mod error;
pub mod inspect;
pub mod pipeline;
pub mod rejects;
pub mod schema;
pub mod sinks;
pub mod sources;
pub mod stages;
pub mod train;

pub use error::{Error, Result};
