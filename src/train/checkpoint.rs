//! Checkpoints: writing one, listing them, and resuming from the newest.
//!
//! A checkpoint (`OUT/checkpoints/step-NNNNNNNN/`) holds the model's
//! weights (`model.safetensors`, for any reader), its record with the
//! parameter ids the optimiser's state is keyed by (`model.mpk`), the
//! optimiser's state (`optimizer.mpk`; with ZeRO one
//! `optimizer-rank-R.mpk` a rank, each holding the state of the parameters
//! that rank owns) and `state.json` (step, where the epoch stands, the
//! ranks, the model's sizes and what the run is); the last `keep` are kept.
//! Rank 0 writes it (with ZeRO every rank writes its optimizer file into
//! the directory rank 0 made), and every rank reads it on `--resume`: with
//! ranks on several machines, the output must be on a file system they all
//! see.
//!
//! `--resume` continues from the newest: the same batches, the same
//! updates, the same final weights as a run never stopped (the model has
//! no dropout, so no generator state is left). It is refused when the
//! training file, the dataset or the number of ranks differ from the
//! checkpoint's in anything that changes what is trained ([`identity`]),
//! naming each difference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::collective::Peer;
use super::compress::CompressState;
use super::config::TrainFile;
use super::model::{Dims, Fusion};
use crate::error::{Error, IoContext, Result};

/// Where a run stands in its epochs: the epoch, and the global batches
/// (of `batch_size` rows a rank) taken in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct At {
    pub(super) epoch: u64,
    pub(super) batches: u64,
}

/// What a checkpoint says besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) step: u64,
    pub(super) at: At,
    pub(super) dims: Dims,
    /// What the run is ([`identity`]).
    run: BTreeMap<String, serde_json::Value>,
    /// Quantisation's ranges and pruning's scores.
    #[serde(default)]
    pub(super) compress: CompressState,
}

/// What makes a run the run it is: every key of the training file that
/// changes which rows are drawn, how they are mixed or what a step does
/// (`seed`, `data.*`, `model.*`, `optim.*` but `stop_after` and
/// `precision`, `mix.*`), the dataset (its manifest's SHA-256, wherever it
/// lies) and the number of ranks. Checkpoints, output and device are not.
pub(super) fn identity(
    file: &TrainFile,
    dataset: &Path,
    world: usize,
) -> Result<BTreeMap<String, serde_json::Value>> {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = match prefix {
                        "" => k.clone(),
                        p => format!("{p}.{k}"),
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut all = BTreeMap::new();
    flatten("", &serde_json::to_value(file)?, &mut all);
    let mut run: BTreeMap<String, serde_json::Value> = all
        .into_iter()
        .filter(|(k, _)| {
            let top = k.split('.').next().unwrap_or("");
            matches!(
                top,
                "seed" | "data" | "model" | "optim" | "mix" | "quant" | "prune" | "distill"
            ) && !matches!(
                k.as_str(),
                "data.path" | "optim.stop_after" | "optim.precision"
            )
        })
        .collect();
    let manifest = dataset.join("manifest.json");
    let bytes = std::fs::read(&manifest).at("read", &manifest)?;
    run.insert(
        "dataset".into(),
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes)).into(),
    );
    run.insert("ranks".into(), world.into());
    Ok(run)
}

/// The differences between a checkpoint's run and this one, as lines.
fn differences(
    then: &BTreeMap<String, serde_json::Value>,
    now: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = then.keys().chain(now.keys()).collect();
    let null = serde_json::Value::Null;
    keys.into_iter()
        .filter(|k| then.get(*k).unwrap_or(&null) != now.get(*k).unwrap_or(&null))
        .map(|k| {
            let (a, b) = (then.get(k).unwrap_or(&null), now.get(k).unwrap_or(&null));
            match k.as_str() {
                "dataset" => "the dataset (its manifest.json differs)".to_string(),
                "ranks" => format!("ranks: {a} in the checkpoint, {b} now (WORLD_SIZE, --nproc)"),
                _ => format!("{k}: {a} in the checkpoint, {b} in this file"),
            }
        })
        .collect()
}

/// A checkpoint being written, by one rank or all of them.
pub(super) struct Writing<'a> {
    pub(super) rank: usize,
    /// With ZeRO every rank writes its own optimizer state.
    pub(super) sharded: bool,
    pub(super) peer: Option<&'a mut Peer>,
}

fn optimizer_file(sharded: bool, rank: usize) -> String {
    match sharded {
        true => format!("optimizer-rank-{rank}"),
        false => "optimizer".into(),
    }
}

/// Writes the checkpoint of `step` (to a temporary directory, renamed when
/// complete) and removes all but the newest `checkpoint.keep`.
#[allow(clippy::too_many_arguments)]
pub(super) fn save<B: AutodiffBackend, O: Optimizer<Fusion<B>, B>>(
    out: &Path,
    model: &Fusion<B>,
    optim: &O,
    step: u64,
    at: At,
    d: &Dims,
    file: &TrainFile,
    run: &BTreeMap<String, serde_json::Value>,
    compress: CompressState,
    w: Writing<'_>,
) -> Result<()> {
    let Writing {
        rank,
        sharded,
        mut peer,
    } = w;
    let dir = out.join("checkpoints").join(format!("step-{step:08}"));
    let tmp = out.join("checkpoints").join(format!(".step-{step:08}.tmp"));
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let record_optim = |to: &Path| {
        recorder
            .record(optim.to_record(), to.join(optimizer_file(sharded, rank)))
            .map_err(|e| Error::Execution(format!("cannot save the optimizer: {e}")))
    };
    if rank != 0 {
        // Rank 0 made the directory; this rank's share of the state, then
        // rank 0 finishes.
        if sharded {
            let p = peer.as_mut().expect("ranks are linked");
            p.barrier()?;
            record_optim(&tmp)?;
            p.barrier()?;
        }
        return Ok(());
    }
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at("remove", &tmp)?;
    }
    std::fs::create_dir_all(&tmp).at("create", &tmp)?;
    let linked = sharded && peer.is_some();
    if linked {
        peer.as_mut().expect("linked").barrier()?;
    }
    let mut store = SafetensorsStore::from_file(tmp.join("model.safetensors"));
    model
        .save_into(&mut store)
        .map_err(|e| Error::Execution(format!("cannot save the model: {e}")))?;
    canonical_safetensors(&tmp.join("model.safetensors"))?;
    recorder
        .record(model.clone().into_record(), tmp.join("model"))
        .map_err(|e| Error::Execution(format!("cannot save the model: {e}")))?;
    record_optim(&tmp)?;
    if linked {
        // The other ranks' optimizer files are written.
        peer.as_mut().expect("linked").barrier()?;
    }
    let state = State {
        step,
        at,
        dims: *d,
        run: run.clone(),
        compress,
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

/// The newest checkpoint under `dir`, with its state; refused when it is of
/// another model than `d` (a pruned `d` when `pruned`) or another run than
/// `run`.
pub(super) fn open(
    dir: &Path,
    d: &Dims,
    run: &BTreeMap<String, serde_json::Value>,
    pruned: bool,
) -> Result<(PathBuf, State)> {
    let ckpt = latest_checkpoint(dir).ok_or_else(|| {
        Error::Config(format!(
            "{} holds no checkpoint to resume from",
            dir.display()
        ))
    })?;
    let state: State =
        serde_json::from_slice(&std::fs::read(ckpt.join("state.json")).at("read", &ckpt)?)
            .map_err(|e| {
                Error::Config(format!(
                    "{}/state.json: not a checkpoint this kiln resumes ({e})",
                    ckpt.display()
                ))
            })?;
    let differ = differences(&state.run, run);
    if !differ.is_empty() {
        return Err(Error::Config(format!(
            "cannot resume from {}: the run differs from the checkpoint's, which would train on another order, mixing or model:\n  {}",
            ckpt.display(),
            differ.join("\n  ")
        )));
    }
    if state.dims != *d && !(pruned && state.dims.unpruned() == *d) {
        return Err(Error::Config(format!(
            "the checkpoint {} is of another model ({:?}); this file and dataset make {:?}",
            ckpt.display(),
            state.dims,
            d
        )));
    }
    Ok((ckpt, state))
}

/// The checkpoint `ckpt` loaded into `model` and `optim` (the optimizer
/// state of `rank` when `sharded`).
pub(super) fn load<B: AutodiffBackend, O: Optimizer<Fusion<B>, B>>(
    ckpt: &Path,
    model: Fusion<B>,
    optim: O,
    device: &B::Device,
    rank: usize,
    sharded: bool,
) -> Result<(Fusion<B>, O)> {
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
        .load(ckpt.join(optimizer_file(sharded, rank)), device)
        .map_err(|e| Error::Config(format!("{}: optimizer state: {e}", ckpt.display())))?;
    let optim = optim.load_record(record);
    Ok((model, optim))
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
