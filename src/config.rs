//! The pipeline file: parse, fill defaults, validate.
//!
//! Every key is checked (`deny_unknown_fields`), so a typo is an error that
//! names the file, the key and its line. Checks that need more than the
//! file's own text (does the glob match, does the SQL fit the input schema)
//! happen when the pipeline is built ([`crate::pipeline`]), still before any
//! data is read, and report the same way through [`ConfigSource::error`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sources::media::Media;
pub use crate::stages::audio::mel::{MelScale, PadMode, Window};
pub use crate::stages::audio::specaugment::{MaskValue, Policy};

/// A parsed pipeline file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Seed of every random choice in the run.
    #[serde(default)]
    pub seed: u64,
    /// Optional DataFusion SQL over the table `input`: filters and projections
    /// only, applied to every batch before the stages.
    #[serde(default)]
    pub sql: Option<String>,
    pub inputs: Vec<InputConfig>,
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    pub output: OutputConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub plan: PlanConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    Jsonl,
    Text,
    Csv,
    Parquet,
    /// Image files: a folder (walked recursively) or a glob.
    Images,
    /// WebDataset-style tar shards: `key.jpg` (or `key.flac`...) with
    /// `key.txt`/`key.json`/`key.cls`.
    Tar,
    /// Audio files: a folder (walked recursively) or a glob.
    Audio,
}

impl InputFormat {
    /// Guess the format from a file name; `None` when the extension says nothing.
    pub fn from_path(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        let ext = lower.rsplit('.').next()?;
        match ext {
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            "txt" | "text" => Some(Self::Text),
            "csv" | "tsv" => Some(Self::Csv),
            "parquet" | "pq" => Some(Self::Parquet),
            "tar" => Some(Self::Tar),
            e if Media::Image.has_extension(e) => Some(Self::Images),
            e if Media::Audio.has_extension(e) => Some(Self::Audio),
            _ => None,
        }
    }
}

impl InputFormat {
    /// Whether each file of the input is one media sample (image or audio
    /// files), read whole.
    pub fn is_media_files(self) -> bool {
        matches!(self, Self::Images | Self::Audio)
    }

    /// Tables, whose rows can name media files.
    pub fn is_table(self) -> bool {
        matches!(self, Self::Jsonl | Self::Csv | Self::Parquet)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentMode {
    /// Each non-blank line is a document.
    #[default]
    Lines,
    /// Each file is one document.
    File,
}

/// One `[[inputs]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// A local path or a glob (`corpus/*.jsonl`, `data/**/*.txt`).
    pub path: String,
    /// Inferred from the extension when omitted.
    #[serde(default)]
    pub format: Option<InputFormat>,
    /// JSONL, CSV and Parquet: the field that holds the document.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Text files: one document per line, or per file.
    #[serde(default)]
    pub document: DocumentMode,
    /// Extra fields to keep as string columns (for SQL and for the output).
    #[serde(default)]
    pub columns: Vec<String>,
    /// CSV: the field delimiter (a single byte).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Tables: the column naming an image file, which is read and joined to
    /// its row. Relative paths are resolved against `image_root`.
    #[serde(default)]
    pub image_column: Option<String>,
    /// Tables with `image_column`: the folder image paths are relative to;
    /// by default the table's own folder.
    #[serde(default)]
    pub image_root: Option<String>,
    /// Tables: the column naming an audio file, read and joined to its row
    /// like `image_column`. Relative paths are resolved against `audio_root`.
    #[serde(default)]
    pub audio_column: Option<String>,
    /// Tables with `audio_column`: the folder audio paths are relative to;
    /// by default the table's own folder.
    #[serde(default)]
    pub audio_root: Option<String>,
    /// Tables with `image_column` or `audio_column`: the column holding the
    /// caption or transcript (`transcript_column` is the same key).
    #[serde(default, alias = "transcript_column")]
    pub caption_column: Option<String>,
    /// Tables with `image_column` or `audio_column`: the column holding the
    /// label (a class name from `classes`, or an integer id).
    #[serde(default)]
    pub label_column: Option<String>,
    /// Image and audio files: where the label comes from. `folder` (the
    /// default) takes the parent folder's name, as torchvision's
    /// ImageFolder and datasets' AudioFolder do.
    #[serde(default)]
    pub labels: LabelSource,
    /// Class names, in id order. Image folders find them from the folder
    /// names when this is not given.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// The name of the folder the image is in.
    #[default]
    Folder,
    /// No label.
    None,
}

fn default_text_field() -> String {
    "text".into()
}

fn default_delimiter() -> String {
    ",".into()
}

/// A stage of the pipeline, in the order written. A closed set: the `type`
/// key picks the variant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StageConfig {
    Tokenize(TokenizeConfig),
    Chunk(ChunkConfig),
    DecodeImage(DecodeImageConfig),
    ResizeImage(ResizeImageConfig),
    ImageFeatures(ImageFeaturesConfig),
    Mix(MixConfig),
    EncodeImage(EncodeImageConfig),
    ToTensor(ToTensorConfig),
    DecodeAudio(DecodeAudioConfig),
    MelSpectrogram(MelSpectrogramConfig),
    SpecAugment(SpecAugmentConfig),
    EncodeAudio(EncodeAudioConfig),
    AugmentText(Box<AugmentTextConfig>),
}

impl StageConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            StageConfig::Tokenize(_) => "tokenize",
            StageConfig::Chunk(_) => "chunk",
            StageConfig::DecodeImage(_) => "decode_image",
            StageConfig::ResizeImage(_) => "resize_image",
            StageConfig::ImageFeatures(_) => "image_features",
            StageConfig::Mix(_) => "mix",
            StageConfig::EncodeImage(_) => "encode_image",
            StageConfig::ToTensor(_) => "to_tensor",
            StageConfig::DecodeAudio(_) => "decode_audio",
            StageConfig::MelSpectrogram(_) => "mel_spectrogram",
            StageConfig::SpecAugment(_) => "spec_augment",
            StageConfig::EncodeAudio(_) => "encode_audio",
            StageConfig::AugmentText(_) => "augment_text",
        }
    }

    /// The stages that work on audio: a pipeline with one reads its folders
    /// and tar shards as audio.
    pub fn is_audio(&self) -> bool {
        matches!(
            self,
            StageConfig::DecodeAudio(_)
                | StageConfig::MelSpectrogram(_)
                | StageConfig::SpecAugment(_)
                | StageConfig::EncodeAudio(_)
        )
    }
}

/// Text augmentation: each sample, then augmented copies made by synonym
/// replacement or back-translation, optionally more copies for rare labels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentTextConfig {
    /// The column holding the text.
    #[serde(default = "default_text_field")]
    pub text_column: String,
    /// Augmented copies per sample, written after the sample itself.
    /// Exclusive with [stages.balance], which decides per label.
    #[serde(default)]
    pub copies: Option<u32>,
    /// The augmentations copy K uses, in turn: copy K takes
    /// `methods[(K - 1) % len]`. By default those with a table, synonym
    /// first.
    #[serde(default)]
    pub methods: Option<Vec<AugmentMethod>>,
    #[serde(default)]
    pub synonym: Option<SynonymConfig>,
    #[serde(default)]
    pub back_translation: Option<BackTranslationConfig>,
    #[serde(default)]
    pub balance: Option<BalanceConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentMethod {
    Synonym,
    BackTranslation,
}

impl AugmentMethod {
    pub fn name(self) -> &'static str {
        match self {
            AugmentMethod::Synonym => "synonym",
            AugmentMethod::BackTranslation => "back_translation",
        }
    }
}

/// WordNet synonym replacement, with nlpaug's SynonymAug parameters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SynonymConfig {
    /// The WordNet 3.0 database directory (`index.noun`, `data.noun`...).
    #[serde(default = "default_wordnet")]
    pub wordnet: String,
    /// The share of words to replace, rounded up.
    #[serde(default = "default_aug_p")]
    pub aug_p: f64,
    #[serde(default = "default_aug_min")]
    pub aug_min: usize,
    /// At most this many words per copy; 0 for no limit.
    #[serde(default = "default_aug_max")]
    pub aug_max: usize,
    /// Words never replaced (compared lower-cased).
    #[serde(default)]
    pub stopwords: Vec<String>,
    /// A file of more stopwords, one a line.
    #[serde(default)]
    pub stopwords_file: Option<String>,
    /// Where parts of speech come from: `none` (synonyms of any part of
    /// speech) or `apertium` (its tagger; nouns take noun synonyms...).
    #[serde(default)]
    pub pos: PosTagger,
    /// `pos = "apertium"`: the mode whose analyser and tagger run
    /// (`eng-spa` tags English).
    #[serde(default = "default_tagger_mode")]
    pub tagger: String,
    /// `pos = "apertium"`: the data directory holding `modes/`.
    #[serde(default = "default_apertium_dir")]
    pub apertium_dir: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PosTagger {
    #[default]
    None,
    Apertium,
}

fn default_tagger_mode() -> String {
    "eng-spa".into()
}

impl Default for SynonymConfig {
    fn default() -> Self {
        SynonymConfig {
            wordnet: default_wordnet(),
            aug_p: default_aug_p(),
            aug_min: default_aug_min(),
            aug_max: default_aug_max(),
            stopwords: Vec::new(),
            stopwords_file: None,
            pos: PosTagger::None,
            tagger: default_tagger_mode(),
            apertium_dir: default_apertium_dir(),
        }
    }
}

fn default_wordnet() -> String {
    "/usr/share/wordnet".into()
}
fn default_aug_p() -> f64 {
    0.3
}
fn default_aug_min() -> usize {
    1
}
fn default_aug_max() -> usize {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TranslatorBackend {
    /// Apertium's rule-based pairs, as a subprocess.
    #[default]
    Apertium,
    /// A Marian-style encoder-decoder exported to ONNX.
    Onnx,
    /// Any command speaking the null-flush protocol (one text a line, then
    /// a NUL byte; answered the same way).
    Command,
}

/// Back-translation: the text into a pivot language and back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackTranslationConfig {
    #[serde(default)]
    pub backend: TranslatorBackend,
    /// Apertium: the language of the texts and the pivot (`eng`, `spa`):
    /// pairs `eng-spa` then `spa-eng`.
    #[serde(default = "default_source_lang")]
    pub lang: String,
    #[serde(default = "default_pivot_lang")]
    pub pivot: String,
    /// Apertium: the data directory holding `modes/`.
    #[serde(default = "default_apertium_dir")]
    pub apertium_dir: String,
    /// Command: the program and its arguments; it translates there and back.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// ONNX: the model directory there (`encoder_model.onnx`,
    /// `decoder_model.onnx`, `tokenizer.json`, `config.json`) and back.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub back_model: Option<String>,
    /// ONNX: beams of the search; 1 is greedy.
    #[serde(default = "default_num_beams")]
    pub num_beams: usize,
    /// ONNX: the longest output, in tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Texts per translator call.
    #[serde(default = "default_translate_batch")]
    pub batch_size: usize,
    /// Longer texts are copied unchanged, with a note.
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    /// Seconds a batch may take before the translator is restarted.
    #[serde(default = "default_translate_timeout")]
    pub timeout_s: u64,
}

impl Default for BackTranslationConfig {
    fn default() -> Self {
        BackTranslationConfig {
            backend: TranslatorBackend::default(),
            lang: default_source_lang(),
            pivot: default_pivot_lang(),
            apertium_dir: default_apertium_dir(),
            command: None,
            model: None,
            back_model: None,
            num_beams: default_num_beams(),
            max_new_tokens: default_max_new_tokens(),
            batch_size: default_translate_batch(),
            max_chars: default_max_chars(),
            timeout_s: default_translate_timeout(),
        }
    }
}

fn default_source_lang() -> String {
    "eng".into()
}
fn default_pivot_lang() -> String {
    "spa".into()
}
fn default_apertium_dir() -> String {
    "/usr/share/apertium".into()
}
fn default_num_beams() -> usize {
    1
}
fn default_max_new_tokens() -> usize {
    128
}
fn default_translate_batch() -> usize {
    64
}
fn default_max_chars() -> usize {
    5000
}
fn default_translate_timeout() -> u64 {
    120
}

/// More copies for rare labels: a label with `c` samples gets
/// `ceil(target / c) - 1` copies per sample (so it reaches at least the
/// target), at most `max_multiplier - 1`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    /// The column holding the label.
    pub label_column: String,
    /// Rows each label should reach. Exclusive with `target_ratio`.
    #[serde(default)]
    pub target: Option<u64>,
    /// Or this fraction of the largest label's count.
    #[serde(default)]
    pub target_ratio: Option<f64>,
    /// A sample and its copies are at most this many rows.
    #[serde(default = "default_max_multiplier")]
    pub max_multiplier: u32,
}

fn default_max_multiplier() -> u32 {
    10
}

/// Decode the image bytes: EXIF orientation applied, converted to RGB.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeImageConfig {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    Bilinear,
    #[default]
    Bicubic,
    Lanczos,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CropMode {
    #[default]
    Center,
    Random,
}

/// Resize so that the shorter side is `size`, then optionally crop a
/// `crop` x `crop` square, as torchvision's `Resize` + `CenterCrop` /
/// `RandomCrop` do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeImageConfig {
    pub size: u32,
    #[serde(default)]
    pub crop: Option<u32>,
    #[serde(default)]
    pub crop_mode: CropMode,
    #[serde(default)]
    pub filter: ResizeFilter,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// CUDA when its provider really loads, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Features from an ONNX image model (EfficientNet-Lite0 by default).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFeaturesConfig {
    /// `efficientnet-lite0`, or the path of an `.onnx` file.
    #[serde(default = "default_model")]
    pub model: String,
    /// The model's image input; by default its first input.
    #[serde(default)]
    pub input_name: Option<String>,
    /// The output stored as `image_features`; by default `features`, else
    /// the model's first output.
    #[serde(default)]
    pub features_output: Option<String>,
    /// Per-channel mean and std in pixel units (0-255): the model sees
    /// `(pixel - mean) / std`. Default: EfficientNet-Lite0's 127 and 128.
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    /// Also store the output named here as `logits`.
    #[serde(default)]
    pub logits_output: Option<String>,
    /// Also store the `top_k` classes of `logits_output` and their
    /// softmax probabilities.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Images per inference call. By default 32 on CUDA and 1 on CPU,
    /// where bigger batches were no faster and took far more memory.
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub device: Device,
}

fn default_model() -> String {
    "efficientnet-lite0".into()
}

/// CutMix and MixUp as offline augmentation, with timm's parameters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// Augmented copies per sample, written after the sample itself.
    #[serde(default = "default_copies")]
    pub copies: u32,
    #[serde(default = "default_mixup_alpha")]
    pub mixup_alpha: f64,
    #[serde(default)]
    pub cutmix_alpha: f64,
    /// Box size as fractions of the image (`[min, max]`); overrides `cutmix_alpha`.
    #[serde(default)]
    pub cutmix_minmax: Option<[f64; 2]>,
    /// Probability that a copy is mixed at all.
    #[serde(default = "default_one")]
    pub prob: f64,
    /// Probability of CutMix instead of MixUp when both are on.
    #[serde(default = "default_switch_prob")]
    pub switch_prob: f64,
    /// Recompute lambda from the clipped CutMix box.
    #[serde(default = "default_true")]
    pub correct_lam: bool,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Also store the mixed, smoothed one-hot target `label_mixed`.
    #[serde(default)]
    pub one_hot: bool,
    /// Classes of the one-hot target; by default the number of class names.
    #[serde(default)]
    pub num_classes: Option<usize>,
}

fn default_copies() -> u32 {
    1
}
fn default_mixup_alpha() -> f64 {
    1.0
}
fn default_one() -> f64 {
    1.0
}
fn default_switch_prob() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageCodec {
    #[default]
    Png,
    Jpeg,
}

/// Store the pixels as encoded image bytes in the `image` column, the layout
/// HuggingFace `datasets` reads as its `Image` feature.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeImageConfig {
    #[serde(default)]
    pub format: ImageCodec,
    /// JPEG quality, 1-100.
    #[serde(default = "default_quality")]
    pub quality: u8,
}

fn default_quality() -> u8 {
    90
}

/// Where a clip longer than `duration` is cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrimMode {
    /// Keep the beginning.
    #[default]
    Start,
    /// Keep the middle.
    Center,
    /// Keep a window at an offset drawn from the sample's seed.
    Random,
}

/// Decode the audio bytes (symphonia) to float samples, then optionally
/// downmix, resample and trim or pad.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeAudioConfig {
    /// Average the channels into one.
    #[serde(default = "default_true")]
    pub mono: bool,
    /// Resample to this rate (Hz), band-limited; by default the file's own.
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// Trim or pad (with zeros at the end) to this many seconds.
    #[serde(default)]
    pub duration: Option<f64>,
    /// Which part of a longer clip `duration` keeps.
    #[serde(default)]
    pub trim: TrimMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MelLog {
    /// `10 log10(max(amin, x))`, floored at `max - top_db` (librosa's
    /// `power_to_db` with `ref = 1.0`).
    #[default]
    Db,
    /// `ln(x + eps)`.
    Log,
    /// The mel energies as they are.
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MelNorm {
    /// Slaney's area normalisation (librosa's default).
    #[default]
    Slaney,
    None,
}

/// A (log-)mel spectrogram of the decoded waveform, as librosa's
/// `feature.melspectrogram` computes it; the defaults are librosa's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MelSpectrogramConfig {
    #[serde(default = "default_n_fft")]
    pub n_fft: usize,
    /// By default `n_fft / 4`.
    #[serde(default)]
    pub hop_length: Option<usize>,
    /// By default `n_fft`.
    #[serde(default)]
    pub win_length: Option<usize>,
    #[serde(default = "default_window")]
    pub window: Window,
    #[serde(default = "default_true")]
    pub center: bool,
    #[serde(default = "default_pad_mode")]
    pub pad_mode: PadMode,
    #[serde(default = "default_n_mels")]
    pub n_mels: usize,
    #[serde(default)]
    pub fmin: f64,
    /// By default half the sample rate.
    #[serde(default)]
    pub fmax: Option<f64>,
    /// `slaney` (librosa's default) or `htk`.
    #[serde(default = "default_mel_scale")]
    pub scale: MelScale,
    #[serde(default)]
    pub norm: MelNorm,
    /// 2 for power, 1 for magnitude.
    #[serde(default = "default_power")]
    pub power: f64,
    #[serde(default)]
    pub log: MelLog,
    /// `log = "db"`: the floor of the energies.
    #[serde(default = "default_amin")]
    pub amin: f64,
    /// `log = "db"`: the dynamic range kept below the maximum; 0 keeps all.
    #[serde(default = "default_top_db")]
    pub top_db: f64,
    /// `log = "log"`: added before the logarithm.
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn default_n_fft() -> usize {
    2048
}
fn default_window() -> Window {
    Window::Hann
}
fn default_pad_mode() -> PadMode {
    PadMode::Constant
}
fn default_n_mels() -> usize {
    128
}
fn default_mel_scale() -> MelScale {
    MelScale::Slaney
}
fn default_power() -> f64 {
    2.0
}
fn default_amin() -> f64 {
    1e-10
}
fn default_top_db() -> f64 {
    80.0
}
fn default_eps() -> f64 {
    1e-6
}

/// SpecAugment copies of the mel spectrogram (Park et al. 2019): a policy's
/// parameters, each overridable.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpecAugmentConfig {
    /// `LB`, `LD`, `SM` or `SS`; by default `LB`.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// W: the largest time shift of the warp anchor, in frames; 0 turns
    /// warping off.
    #[serde(default)]
    pub time_warp: Option<u32>,
    /// F: the widest frequency mask, in mel bins.
    #[serde(default)]
    pub freq_mask: Option<u32>,
    /// mF: frequency masks per copy.
    #[serde(default)]
    pub freq_masks: Option<u32>,
    /// T: the widest time mask, in frames.
    #[serde(default)]
    pub time_mask: Option<u32>,
    /// p: a time mask is at most this fraction of the frames.
    #[serde(default)]
    pub time_mask_ratio: Option<f64>,
    /// mT: time masks per copy.
    #[serde(default)]
    pub time_masks: Option<u32>,
    /// `zero` or `mean` (of the spectrogram after warping).
    #[serde(default)]
    pub mask_value: Option<MaskValue>,
    /// Augmented copies per sample, written after the sample itself.
    #[serde(default = "default_copies")]
    pub copies: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleFormat {
    /// 16-bit integer PCM.
    #[default]
    Pcm16,
    /// 32-bit float.
    Float32,
}

/// Store the decoded waveform as WAV bytes in the `audio` column, the layout
/// HuggingFace `datasets` reads as its `Audio` feature.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeAudioConfig {
    #[serde(default)]
    pub sample_format: SampleFormat,
}

/// Store the pixels as a float tensor `pixel_values` (CHW), normalised as
/// `(pixel - mean) / std` with mean and std in pixel units (0-255).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToTensorConfig {
    #[serde(default = "default_tensor_mean")]
    pub mean: [f32; 3],
    #[serde(default = "default_tensor_std")]
    pub std: [f32; 3],
}

fn default_tensor_mean() -> [f32; 3] {
    [123.675, 116.28, 103.53]
}

fn default_tensor_std() -> [f32; 3] {
    [58.395, 57.12, 57.375]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeConfig {
    /// An existing `tokenizer.json` to load. Exclusive with `train`.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Train a byte-level BPE tokenizer on the pipeline's own corpus.
    #[serde(default)]
    pub train: Option<TrainConfig>,
    /// A file of terms, one per line, that are never split into sub-words.
    #[serde(default)]
    pub domain_vocab: Option<String>,
    /// The column holding the text.
    #[serde(default = "default_text_field")]
    pub text_column: String,
    /// Keep the text column in the output beside the ids.
    #[serde(default)]
    pub keep_text: bool,
    /// Let the tokenizer's post-processor add its special tokens.
    #[serde(default)]
    pub add_special_tokens: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    #[serde(default)]
    pub special_tokens: Vec<String>,
}

fn default_vocab_size() -> usize {
    30000
}

fn default_min_frequency() -> u64 {
    2
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkConfig {
    /// Longest window, in tokens.
    pub max_tokens: usize,
    /// Tokens shared by consecutive windows.
    #[serde(default)]
    pub stride: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Arrow IPC stream shards that `datasets.load_from_disk` opens.
    #[default]
    Arrow,
    /// Parquet shards.
    Parquet,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Arrow => "arrow",
            OutputFormat::Parquet => "parquet",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    None,
    #[default]
    Snappy,
    Zstd,
    Lz4,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The dataset directory.
    pub path: String,
    #[serde(default)]
    pub format: OutputFormat,
    /// A shard is closed once it holds this many bytes.
    #[serde(default = "default_max_shard_bytes")]
    pub max_shard_bytes: u64,
    /// A shard never holds more rows than this.
    #[serde(default = "default_max_shard_rows")]
    pub max_shard_rows: u64,
    #[serde(default)]
    pub parquet_compression: ParquetCompression,
}

fn default_max_shard_bytes() -> u64 {
    500_000_000
}

fn default_max_shard_rows() -> u64 {
    1_000_000
}

/// Limits that turn hostile input into rejects instead of crashes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest line of a line-oriented file (text lines, JSONL, CSV record).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Longest document (a text field or a whole file).
    #[serde(default = "default_max_document_bytes")]
    pub max_document_bytes: usize,
    /// Largest media file (an image, a tar member) read.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Largest image, in pixels, as its header claims: bigger ones are
    /// rejected before they are decoded (decompression bombs).
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
    /// Longest audio clip, in seconds, as its header claims or as it
    /// decodes: longer ones are rejected without being decoded whole.
    #[serde(default = "default_max_audio_seconds")]
    pub max_audio_seconds: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: default_max_line_bytes(),
            max_document_bytes: default_max_document_bytes(),
            max_file_bytes: default_max_file_bytes(),
            max_image_pixels: default_max_image_pixels(),
            max_audio_seconds: default_max_audio_seconds(),
        }
    }
}

fn default_max_file_bytes() -> u64 {
    64 << 20
}

fn default_max_image_pixels() -> u64 {
    64_000_000
}

fn default_max_audio_seconds() -> f64 {
    600.0
}

fn default_max_line_bytes() -> usize {
    16 << 20
}

fn default_max_document_bytes() -> usize {
    16 << 20
}

/// How inputs are cut into tasks and batches. Part of the plan: changing it
/// changes the shards.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Input bytes per task; large files are split at line boundaries.
    #[serde(default = "default_task_bytes")]
    pub task_bytes: u64,
    /// Rows per batch handed to the stages.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            task_bytes: default_task_bytes(),
            batch_rows: default_batch_rows(),
        }
    }
}

fn default_task_bytes() -> u64 {
    32 << 20
}

fn default_batch_rows() -> usize {
    1024
}

/// The text of a pipeline (or training) file, kept to point errors at lines.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub text: String,
    /// What the file is, for errors: `pipeline` or `training`.
    what: &'static str,
}

impl ConfigSource {
    /// Read a pipeline file.
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_as(path, "pipeline")
    }

    /// Read a `what` file (`training`), whose errors say so.
    pub fn read_as(path: &Path, what: &'static str) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read {what} file {}: {e}", path.display()))
        })?;
        Ok(ConfigSource {
            path: path.to_path_buf(),
            text,
            what,
        })
    }

    /// Parse the pipeline file; an error names the file, the key path and
    /// the line.
    pub fn parse(&self) -> Result<PipelineConfig> {
        self.parse_with(|path| self.stage_detail(path))
    }

    /// Parse the file as a `T`; an error names the file, the key path and
    /// the line.
    pub fn parse_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        self.parse_with(|_| None)
    }

    /// Parse the file as a `T`; `detail` turns serde's key path into a more
    /// precise key and message where it can (a stage's, behind its tag).
    fn parse_with<T: serde::de::DeserializeOwned>(
        &self,
        detail: impl Fn(&str) -> Option<(String, String)>,
    ) -> Result<T> {
        let de = toml::Deserializer::parse(&self.text).map_err(|e| {
            let line = e.span().map(|s| self.line_of_offset(s.start));
            self.error_at(line, None, e.message())
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let span_line = inner.span().map(|s| self.line_of_offset(s.start));
            let (key, message) =
                detail(&path).unwrap_or_else(|| (path.clone(), inner.message().to_string()));
            let key = match unknown_field(&message) {
                Some(field) if !key.ends_with(field) => format!("{key}.{field}"),
                _ => key,
            };
            let key = key.trim_start_matches('.').to_string();
            let line = self.line_of_key(&key).or(span_line);
            self.error_at(line, (!key.is_empty()).then_some(key.as_str()), message)
        })
    }

    /// A stage's keys are checked through its `type` tag, which hides the
    /// failing key; deserialize that stage's table alone to find it.
    fn stage_detail(&self, path: &str) -> Option<(String, String)> {
        let index: usize = path
            .strip_prefix("stages[")?
            .split(']')
            .next()?
            .parse()
            .ok()?;
        let doc: toml::Table = toml::from_str(&self.text).ok()?;
        let mut table = doc
            .get("stages")?
            .as_array()?
            .get(index)?
            .as_table()?
            .clone();
        let kind = table.remove("type")?;
        let value = toml::Value::Table(table);
        let err = match kind.as_str()? {
            "tokenize" => serde_path_to_error::deserialize::<_, TokenizeConfig>(value).err()?,
            "chunk" => serde_path_to_error::deserialize::<_, ChunkConfig>(value).err()?,
            "decode_image" => {
                serde_path_to_error::deserialize::<_, DecodeImageConfig>(value).err()?
            }
            "resize_image" => {
                serde_path_to_error::deserialize::<_, ResizeImageConfig>(value).err()?
            }
            "image_features" => {
                serde_path_to_error::deserialize::<_, ImageFeaturesConfig>(value).err()?
            }
            "mix" => serde_path_to_error::deserialize::<_, MixConfig>(value).err()?,
            "encode_image" => {
                serde_path_to_error::deserialize::<_, EncodeImageConfig>(value).err()?
            }
            "to_tensor" => serde_path_to_error::deserialize::<_, ToTensorConfig>(value).err()?,
            "decode_audio" => {
                serde_path_to_error::deserialize::<_, DecodeAudioConfig>(value).err()?
            }
            "mel_spectrogram" => {
                serde_path_to_error::deserialize::<_, MelSpectrogramConfig>(value).err()?
            }
            "spec_augment" => {
                serde_path_to_error::deserialize::<_, SpecAugmentConfig>(value).err()?
            }
            "encode_audio" => {
                serde_path_to_error::deserialize::<_, EncodeAudioConfig>(value).err()?
            }
            _ => return None,
        };
        let inner_path = err.path().to_string();
        let key = if inner_path == "." {
            format!("stages[{index}]")
        } else {
            format!("stages[{index}].{inner_path}")
        };
        Some((key, err.into_inner().message().to_string()))
    }

    fn line_of_offset(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    /// An error about `key` (a dotted path such as `stages[1].stride` or
    /// `output.path`), located in the file when it can be found.
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        self.error_at(self.line_of_key(key), Some(key), message)
    }

    fn error_at(
        &self,
        line: Option<usize>,
        key: Option<&str>,
        message: impl std::fmt::Display,
    ) -> Error {
        let mut out = format!("invalid {} file {}", self.what, self.path.display());
        if let Some(line) = line {
            out.push_str(&format!(", line {line}"));
        }
        if let Some(key) = key {
            out.push_str(&format!(", key `{key}`"));
        }
        out.push_str(&format!(": {message}"));
        if let Some(text) = line.and_then(|l| self.text.lines().nth(l - 1)) {
            out.push_str(&format!("\n  | {}", text.trim_end()));
        }
        Error::Config(out)
    }

    /// Line of a dotted key such as `seed`, `output.path`, `stages[1].stride`
    /// or `stages[0].train.vocab_size`; the line of the innermost table
    /// header found when the key itself is not written, else `None`.
    pub fn line_of_key(&self, key: &str) -> Option<usize> {
        let lines: Vec<&str> = self.text.lines().collect();
        let parts: Vec<&str> = key.split('.').collect();
        let (leaf, sections) = parts.split_last()?;
        let mut start = 0;
        let mut header_line = None;
        let mut table = String::new();
        for section in sections {
            let (name, index) = match section.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (*section, None),
            };
            if !table.is_empty() {
                table.push('.');
            }
            table.push_str(name);
            let header = match index {
                Some(_) => format!("[[{table}]]"),
                None => format!("[{table}]"),
            };
            let want = index.unwrap_or(0);
            let mut seen = 0;
            let found = (start..lines.len()).find(|&i| {
                if lines[i].trim() == header {
                    seen += 1;
                    seen > want
                } else {
                    false
                }
            });
            match found {
                Some(i) => {
                    start = i + 1;
                    header_line = Some(i + 1);
                }
                // Written inline (`train = { ... }`): point at that key.
                None => return find_key(&lines, start, name).or(header_line),
            }
        }
        find_key(&lines, start, leaf).or(header_line)
    }
}

/// The line (1-based) of `key = ...` from `start` up to the next table header.
fn find_key(lines: &[&str], start: usize, key: &str) -> Option<usize> {
    let name = key.split('[').next().unwrap_or(key);
    for (i, l) in lines.iter().enumerate().skip(start) {
        let t = l.trim_start();
        if t.starts_with('[') {
            break;
        }
        if let Some(rest) = t.strip_prefix(name)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

/// `unknown field `x`, expected ...` -> `x`
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// Values given on the command line that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub input: Option<String>,
    pub output: Option<String>,
    pub seed: Option<u64>,
    pub format: Option<OutputFormat>,
}

impl Overrides {
    pub fn apply(&self, source: &ConfigSource, config: &mut PipelineConfig) -> Result<()> {
        if let Some(input) = &self.input {
            if config.inputs.len() != 1 {
                return Err(source.error(
                    "inputs",
                    format!(
                        "--input replaces the pipeline's single input, but it has {}",
                        config.inputs.len()
                    ),
                ));
            }
            config.inputs[0].path = input.clone();
        }
        if let Some(output) = &self.output {
            config.output.path = output.clone();
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(format) = self.format {
            config.output.format = format;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> ConfigSource {
        ConfigSource {
            path: "p.toml".into(),
            text: text.into(),
            what: "pipeline",
        }
    }

    const GOOD: &str = r#"
seed = 7

[[inputs]]
path = "a/*.jsonl"

[[stages]]
type = "tokenize"
tokenizer = "t.json"

[[stages]]
type = "chunk"
max_tokens = 8
stride = 2

[output]
path = "out"
"#;

    #[test]
    fn parses_and_fills_defaults() {
        let c = source(GOOD).parse().unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.inputs[0].text_field, "text");
        assert_eq!(c.output.max_shard_bytes, 500_000_000);
        assert!(matches!(
            c.stages[1],
            StageConfig::Chunk(ChunkConfig {
                max_tokens: 8,
                stride: 2
            })
        ));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("stride = 2", "strid = 2");
        let err = source(&text).parse().unwrap_err().to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("strid"), "{err}");
        assert!(err.contains("line 14"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = GOOD.replace("max_tokens = 8", "max_tokens = \"eight\"");
        let err = source(&text).parse().unwrap_err().to_string();
        assert!(
            err.contains("stages[1].max_tokens") || err.contains("max_tokens"),
            "{err}"
        );
        assert!(err.contains("line 13"), "{err}");
    }

    #[test]
    fn locates_keys_in_array_tables() {
        let s = source(GOOD);
        assert_eq!(s.line_of_key("stages[1].stride"), Some(14));
        assert_eq!(s.line_of_key("stages[0].tokenizer"), Some(9));
        assert_eq!(s.line_of_key("output.path"), Some(17));
        assert_eq!(s.line_of_key("seed"), Some(2));
        assert_eq!(s.line_of_key("inputs[0].path"), Some(5));
        let nested = source(
            "[[stages]]\ntype = \"tokenize\"\n[stages.train]\nvocab_size = 5\n[[stages]]\n[stages.train]\nvocab_size = 6\n",
        );
        assert_eq!(nested.line_of_key("stages[0].train.vocab_size"), Some(4));
        assert_eq!(nested.line_of_key("stages[1].train.vocab_size"), Some(7));
    }
}
