//! kiln's integration tests, one binary (each test binary links the whole
//! crate again, so one is much cheaper to build than one per file). Each
//! module is a topic: `examples` (every example pipeline's bytes and rows
//! against `tests/golden/`), `refusals` (`tests/refusals/*.toml`), `layout`
//! (the import layers, no circles, file sizes), `pipelines`, `cli`,
//! `resume`, `images`, `audio`, `multimodal`, `text_augment`, `train`,
//! `train_loader`, `train_parallel` (epochs, resumes, data-parallel ranks,
//! long texts), `train_compress` (quantisation, pruning, distillation,
//! activation monitoring), `remote` (object storage, against a moto server),
//! `report` (`kiln report` pages, checked in a headless Chromium), `hostile`
//! (odd names, special files, links, paths outside their root, damaged
//! datasets), `faults` (a full disk, a read-only or deleted output), `kills` (each
//! example killed at random moments, resumed to the same bytes), `fuzz`
//! (the fuzz corpora replayed). Run one
//! with `cargo nextest run MODULE::`.

mod common;

mod audio;
mod cli;
mod examples;
mod faults;
mod fuzz;
mod hostile;
mod images;
mod kills;
mod layout;
mod multimodal;
mod pipelines;
mod refusals;
mod remote;
mod report;
mod resume;
mod text_augment;
mod train;
mod train_compress;
mod train_loader;
mod train_parallel;
