//! Codecs under the readers, the stages and the trainer: audio decoding
//! with its header claims ([`audio`]), band-limited resampling
//! ([`resample`]) and image decoding with its pixel limits ([`image`]).
//! They turn bytes into samples or pixels, or reject them with a reason;
//! they know nothing of batches or pipelines.

pub mod audio;
pub mod image;
pub mod resample;
