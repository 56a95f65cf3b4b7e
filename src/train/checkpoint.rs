//! Checkpoints: writing one, listing them, and resuming from the newest.
//!
//! A checkpoint (`OUT/checkpoints/step-NNNNNNNN/`) holds the model's
//! weights (`model.safetensors`, for any reader), its record with the
//! parameter ids the optimiser's state is keyed by (`model.mpk`), the
//! optimiser's state (`optimizer.mpk`) and `state.json` (step, loader
//! position, the model's sizes); the last `keep` are kept. `--resume`
//! continues from the newest: the same batches, the same updates, the same
//! final weights as a run never stopped (the model has no dropout, so no
//! generator state is left).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::config::TrainFile;
use super::loader::Position;
use super::model::{Dims, Fusion};
use crate::error::{Error, IoContext, Result};

/// What a checkpoint says besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) step: u64,
    pub(super) position: Position,
    dims: Dims,
    seed: u64,
}

/// Writes the checkpoint of `step` (to a temporary directory, renamed when
/// complete) and removes all but the newest `checkpoint.keep`.
pub(super) fn save<B: AutodiffBackend, O: Optimizer<Fusion<B>, B>>(
    out: &Path,
    model: &Fusion<B>,
    optim: &O,
    step: u64,
    position: Position,
    d: &Dims,
    file: &TrainFile,
) -> Result<()> {
    let dir = out.join("checkpoints").join(format!("step-{step:08}"));
    let tmp = out.join("checkpoints").join(format!(".step-{step:08}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at("remove", &tmp)?;
    }
    std::fs::create_dir_all(&tmp).at("create", &tmp)?;
    let mut store = SafetensorsStore::from_file(tmp.join("model.safetensors"));
    model
        .save_into(&mut store)
        .map_err(|e| Error::Execution(format!("cannot save the model: {e}")))?;
    canonical_safetensors(&tmp.join("model.safetensors"))?;
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    recorder
        .record(model.clone().into_record(), tmp.join("model"))
        .map_err(|e| Error::Execution(format!("cannot save the model: {e}")))?;
    recorder
        .record(optim.to_record(), tmp.join("optimizer"))
        .map_err(|e| Error::Execution(format!("cannot save the optimizer: {e}")))?;
    let state = State {
        step,
        position,
        dims: *d,
        seed: file.seed,
    };
    std::fs::write(tmp.join("state.json"), serde_json::to_vec_pretty(&state)?).at("write", &tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).at("remove", &dir)?;
    }
    std::fs::rename(&tmp, &dir).at("rename", &tmp)?;
    // Keep the newest `keep`.
    let mut all = checkpoint_dirs(out).at("list", out.join("checkpoints"))?;
    while all.len() > file.checkpoint.keep.max(1) {
        let old = all.remove(0);
        std::fs::remove_dir_all(&old).at("remove", &old)?;
    }
    Ok(())
}

/// Rewrites a safetensors file's JSON header with its keys sorted (burn
/// writes `__metadata__` in hash order), padded to 8 bytes: the same
/// weights give the same bytes.
fn canonical_safetensors(path: &Path) -> Result<()> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut e: Vec<_> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                e.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(e.into_iter().collect())
            }
            other => other,
        }
    }
    let bytes = std::fs::read(path).at("read", path)?;
    let bad = || Error::Execution(format!("{}: not a safetensors file", path.display()));
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(bad)?;
    let header = bytes.get(8..8 + n).ok_or_else(bad)?;
    let mut text = serde_json::to_vec(&sorted(serde_json::from_slice(header)?))?;
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).at("write", path)
}

/// The newest checkpoint under `dir` loaded into `model` and `optim`, with
/// its directory and state; refused when it is of another model than `d`.
pub(super) fn load<B: AutodiffBackend, O: Optimizer<Fusion<B>, B>>(
    dir: &Path,
    d: &Dims,
    model: Fusion<B>,
    optim: O,
    device: &B::Device,
) -> Result<(Fusion<B>, O, PathBuf, State)> {
    let ckpt = latest_checkpoint(dir).ok_or_else(|| {
        Error::Config(format!(
            "{} holds no checkpoint to resume from",
            dir.display()
        ))
    })?;
    let state: State =
        serde_json::from_slice(&std::fs::read(ckpt.join("state.json")).at("read", &ckpt)?)?;
    if state.dims != *d {
        return Err(Error::Config(format!(
            "the checkpoint {} is of another model ({:?}); this file and dataset make {:?}",
            ckpt.display(),
            state.dims,
            d
        )));
    }
    // The model's record keeps its parameter ids, which the optimiser's
    // state is keyed by (model.safetensors is the weights for others).
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let record = recorder.load(ckpt.join("model"), device).map_err(|e| {
        Error::Config(format!(
            "{}: the weights do not fit the model: {e}",
            ckpt.display()
        ))
    })?;
    let model = model.load_record(record);
    let record = recorder
        .load(ckpt.join("optimizer"), device)
        .map_err(|e| Error::Config(format!("{}: optimizer state: {e}", ckpt.display())))?;
    let optim = optim.load_record(record);
    Ok((model, optim, ckpt, state))
}

/// The `step-N` checkpoints under `dir/checkpoints`, oldest first (not a
/// `.step-N.tmp`, which a kill left half-written).
fn checkpoint_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    steps.sort();
    Ok(steps)
}

/// The newest complete checkpoint under `dir/checkpoints`.
fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    checkpoint_dirs(dir)
        .ok()?
        .into_iter()
        .rfind(|p| p.join("state.json").exists())
}
