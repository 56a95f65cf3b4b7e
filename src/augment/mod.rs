//! The text augmentation library under the `augment_text` stage:
//! translators (Apertium and any null-flush command as subprocesses, a
//! Marian-style ONNX encoder-decoder with beam search), WordNet synonym
//! replacement as nlpaug's `SynonymAug` does it, and the WordNet database
//! reader.

pub mod seq2seq;
pub mod synonym;
pub mod translate;
pub mod wordnet;
