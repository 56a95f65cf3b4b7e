//! Audio: the signal processing of the audio path. `mel` computes log-mel
//! spectrograms as librosa does (its reference values are the tests).
//! Audio sources and stages are built on it.

pub mod mel;
