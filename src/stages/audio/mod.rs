//! Audio: the signal processing of the audio path. `decode` turns files
//! into samples with symphonia; `resample` changes their rate; `mel` computes mel
//! spectrograms as librosa does (its reference values are the tests);
//! `specaugment` masks and warps them as Park et al. (2019) describe.
//! Audio sources and the stages that use these are built on them.

pub mod decode;
pub mod mel;
pub mod resample;
pub mod specaugment;
