//! Media readers: image or audio files (a folder or a glob, labelled by
//! their parent folder as torchvision's ImageFolder and datasets'
//! AudioFolder do), WebDataset-style tar shards, and metadata tables
//! (JSONL/CSV/Parquet) joined with the files they name.
//!
//! They all produce the *media record schema*: `sample_id`, `source`,
//! `position`, `path`, the encoded bytes (`_image` or `_audio`, not decoded
//! here), optionally `label` (a class id) and `text` (a caption or
//! transcript), then the input's extra columns as strings. A file that
//! cannot be read, is over `limits.max_file_bytes`, or has an unknown label
//! is a reject; batches are cut by bytes so that a batch of large files
//! stays small.

mod files;
mod folder;
mod record;
mod table;
mod tar;
mod vocabulary;

// `self::`: the `tar` crate has the same name.
pub use self::tar::TarReader;
pub use files::{
    check_entry, check_local, folder_classes, folder_label, media_files, read_limited, walk_media,
};
pub use folder::MediaFileReader;
pub use table::TableMediaReader;
pub use vocabulary::{AlsoFile, Media, MediaSpec, TABLE_OWN_COLUMNS, media_record_schema};
