//! kiln builds datasets for machine learning from raw files.
//!
//! ```text
//! pipeline file --config--> Pipeline: inputs resolved, stages built from their own
//!   configs (stages::StageConfig, one line a stage), schemas chained, checked
//!   --plan--> tasks (byte ranges / row groups of the inputs, frozen in .kiln/plan.json)
//!   --fit--> one scan of the input for the stages that must see it first
//!            (a tokenizer trained on it, label counts to balance)
//!   per task, on worker threads:
//!     source reader --batches--> [sql] --> stages ---------------------> shard writer
//!          |                        \__________ rejects __________/        |
//!          +--> rejects (bad UTF-8, bad JSON, over the limits, ...)        |
//!     text:   [augment_text] --> tokenize --> [chunk] [filter_length]
//!     image:  decode_image --> resize_image --> [image_features] --> [mix]
//!             --> encode_image | to_tensor        (tokenize for captions)
//!     audio:  decode_audio --> [encode_audio] --> mel_spectrogram --> [spec_augment]
//!     multimodal rows (a table naming an image and an audio file): the image
//!             stages, the audio stages and tokenize on one row
//!     task marker (shards, rows, sha256, counts) written last <------------+
//!   all markers --commit--> data-*-of-*.arrow, rejects.arrow, dataset_info.json,
//!                           state.json, manifest.json (crate::dataset)
//!
//! kiln train: dataset shards --loader (seed, epoch order; exact resume)--> batches
//!   --> fusion model (burn) --> AdamW, warmup + cosine --> checkpoints, metrics.jsonl
//!
//! layers (tests/it/layout.rs): report, fuzz > engine, inspect, train > config, pipeline
//!   > sources, stages, sinks > error, rejects, schema, limits, dataset,
//!     codec, onnx, tokenize, augment
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

pub mod augment;
pub mod chart;
pub mod codec;
pub mod config;
pub mod dataset;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod inspect;
pub mod limits;
pub mod mixing;
pub mod onnx;
pub mod pipeline;
pub mod rejects;
pub mod report;
pub mod schema;
pub mod simd;
pub mod sinks;
pub mod sources;
pub mod stages;
pub mod storage;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};
