//! The training loader: a kiln dataset's Arrow shards streamed in batches,
//! in an order that is a function of (seed, epoch) alone, split across
//! data-parallel ranks, and resumable at any batch.
//!
//! Shards stay in the IPC stream format `datasets.load_from_disk` reads;
//! [`Dataset::open`] indexes each one (the offset and length of every
//! record-batch message, from the message headers alone), so that a shard
//! is read by seeking, never by decoding what comes before.
//!
//! The order of an epoch:
//! * the shards are permuted by a generator seeded from (seed, epoch);
//! * the permuted shards are taken `group_shards` at a time, and the rows of
//!   a group are permuted by a generator seeded from (seed, epoch, group):
//!   memory holds one group, whatever the dataset's size;
//! * with a [`Holdout`], only the rows on one side of the validation split
//!   (a hash of the `sample_id`) stay in that order: a training loader never
//!   sees a held-out row, an evaluation loader sees only them;
//! * the `q`-th row of the epoch's order goes to rank `q % world`, so every
//!   row is seen once per epoch across the ranks;
//! * a rank's rows are cut into batches of `batch_size` (the last batch of
//!   an epoch may be smaller). The `k`-th batch of every rank holds the rows
//!   `q` in `[k * batch_size * world, (k + 1) * batch_size * world)`: the
//!   ranks' `k`-th batches together are the epoch's `k`-th global batch.
//!
//! A [`Position`] (epoch, rows this rank has taken in it) is the loader's
//! whole state: [`Loader::seek`] to a saved position yields exactly the
//! batches an uninterrupted run would have, whatever threads or machine.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::{FileDecoder, StreamReader};
use arrow::ipc::{Block, MessageHeader, MetadataVersion};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Manifest;
use crate::dataset::OutputFormat;
use crate::error::{Error, IoContext, Result};

/// One record-batch message of a shard.
#[derive(Debug, Clone)]
struct Message {
    offset: u64,
    meta_len: i32,
    body_len: i64,
    rows: u64,
}

#[derive(Debug, Clone)]
pub struct Shard {
    pub path: PathBuf,
    pub rows: u64,
    version: MetadataVersion,
    messages: Vec<Message>,
}

/// A kiln dataset opened for training.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub schema: SchemaRef,
    pub shards: Vec<Shard>,
    pub rows: u64,
    /// The held-out rows of each shard, by validation share (its bits):
    /// counted once, from the `sample_id` column.
    held: Arc<Mutex<BTreeMap<u64, Arc<Vec<u64>>>>>,
}

/// One side of the validation split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holdout {
    /// The share of samples held out.
    pub share: f64,
    /// The held-out side (evaluation), or the training side.
    pub held: bool,
}

/// Whether the sample `id` is held out at validation share `share`: the
/// first 8 bytes of its SHA-256 as a fraction of 2^64, below `share`.
pub fn held_out(id: &str, share: f64) -> bool {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let v = u64::from_le_bytes(d.as_ref()[..8].try_into().expect("8 bytes"));
    (v as f64 / u64::MAX as f64) < share
}

/// Which rows of `batch` are on `side` of the split.
fn on_side(batch: &RecordBatch, side: Holdout) -> Result<Vec<bool>> {
    let ids = batch
        .column_by_name("sample_id")
        .ok_or_else(|| Error::Execution("train: no `sample_id` column to split by".into()))?
        .as_string_opt::<i32>()
        .ok_or_else(|| Error::Execution("train: `sample_id` is not a string column".into()))?;
    Ok((0..batch.num_rows())
        .map(|r| held_out(ids.value(r), side.share) == side.held)
        .collect())
}

const CONTINUATION: [u8; 4] = [0xff; 4];

/// The record-batch messages of an IPC stream, from their headers.
fn index_stream(path: &Path) -> Result<(Vec<Message>, MetadataVersion)> {
    let mut f = File::open(path).at("open", path)?;
    let len = f.metadata().at("stat", path)?.len();
    let mut messages = Vec::new();
    let mut version = MetadataVersion::V5;
    let mut pos = 0u64;
    let mut total = 0u64;
    let bad = |why: &str| Error::Execution(format!("{}: {why}", path.display()));
    while pos + 4 <= len {
        let mut word = [0u8; 4];
        f.read_exact(&mut word).at("read", path)?;
        let (prefix, meta) = if word == CONTINUATION {
            f.read_exact(&mut word).at("read", path)?;
            (8u64, i32::from_le_bytes(word))
        } else {
            (4u64, i32::from_le_bytes(word))
        };
        if meta == 0 {
            break; // end-of-stream marker
        }
        if meta < 0 || pos + prefix + meta as u64 > len {
            return Err(bad("not an Arrow IPC stream (a message runs past the end)"));
        }
        let mut buf = vec![0u8; meta as usize];
        f.read_exact(&mut buf).at("read", path)?;
        let message = arrow::ipc::root_as_message(&buf)
            .map_err(|e| bad(&format!("not an Arrow IPC stream: {e}")))?;
        let body = message.bodyLength();
        if body < 0 || pos + prefix + meta as u64 + body as u64 > len {
            return Err(bad("truncated: a message body runs past the end"));
        }
        match message.header_type() {
            MessageHeader::Schema => version = message.version(),
            MessageHeader::RecordBatch => {
                let length = message
                    .header_as_record_batch()
                    .map(|b| b.length())
                    .ok_or_else(|| bad("a record batch message without its header"))?;
                // Arrow's readers hold at most i32::MAX rows a batch; the
                // total is checked, so sums of rows never overflow.
                let rows = u64::try_from(length)
                    .ok()
                    .filter(|&r| r <= i32::MAX as u64)
                    .ok_or_else(|| bad(&format!("a record batch claims {length} rows")))?;
                total = total
                    .checked_add(rows)
                    .filter(|&t| t <= i64::MAX as u64)
                    .ok_or_else(|| {
                        bad("its record batches claim more rows than a shard can hold")
                    })?;
                messages.push(Message {
                    offset: pos,
                    meta_len: (prefix + meta as u64) as i32,
                    body_len: body,
                    rows,
                });
            }
            MessageHeader::DictionaryBatch => {
                return Err(bad(
                    "dictionary-encoded columns are not read by the trainer",
                ));
            }
            _ => {}
        }
        pos += prefix + meta as u64 + body as u64;
        f.seek(SeekFrom::Start(pos)).at("seek", path)?;
    }
    Ok((messages, version))
}

/// The Arrow IPC reader panics on some malformed messages (a schema with
/// an integer of no width, a schema without its fields): such a shard is an
/// error naming it, not a crash.
fn ipc<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::error::catch_panic(f).unwrap_or_else(|why| {
        Err(Error::Execution(format!(
            "{}: not a readable Arrow IPC stream (the reader failed: {why})",
            path.display()
        )))
    })
}

/// The most bytes one compressed buffer may claim to decompress to.
const MAX_BUFFER_BYTES: i64 = 4 << 30;

/// Refuse a record batch message (`buf`: its metadata, `meta_len` bytes
/// with the prefix, then its body) whose compressed buffers claim more than
/// [`MAX_BUFFER_BYTES`] decompressed, or a negative size other than -1 (not
/// compressed): the IPC reader allocates what each claims before
/// decompressing (a claim of petabytes aborts the process; found by the
/// `loader` fuzz target).
fn check_claims(buf: &[u8], meta_len: usize) -> std::result::Result<(), String> {
    let prefix = if buf.starts_with(&CONTINUATION) { 8 } else { 4 };
    let (Some(meta), Some(body)) = (buf.get(prefix..meta_len), buf.get(meta_len..)) else {
        return Err("a message shorter than its header".into());
    };
    let message = arrow::ipc::root_as_message(meta).map_err(|e| e.to_string())?;
    let Some(batch) = message.header_as_record_batch() else {
        return Ok(());
    };
    if batch.compression().is_none() {
        return Ok(());
    }
    for b in batch.buffers().into_iter().flatten() {
        let start = usize::try_from(b.offset()).unwrap_or(usize::MAX);
        let claim = body
            .get(start..start.saturating_add(8))
            .map(|w| i64::from_le_bytes(w.try_into().expect("8 bytes")));
        if let Some(claim) = claim
            && b.length() >= 8
            && !(-1..=MAX_BUFFER_BYTES).contains(&claim)
        {
            return Err(format!(
                "a compressed buffer claims {claim} bytes decompressed, over {MAX_BUFFER_BYTES}"
            ));
        }
    }
    Ok(())
}

/// A shard's schema, from its first message. The reader allocates what
/// that message claims: call it after [`index_stream`], which checks every
/// message's claimed lengths against the file (found by the `loader` fuzz
/// target).
fn stream_schema(path: &Path) -> Result<SchemaRef> {
    let f = File::open(path).at("open", path)?;
    ipc(path, || Ok(StreamReader::try_new(f, None)?.schema()))
}

/// One shard file, indexed and read whole as the trainer reads a shard:
/// the rows its headers claim, and its batch.
pub fn read_shard_file(path: &Path) -> Result<(u64, RecordBatch)> {
    let (messages, version) = index_stream(path)?;
    let schema = stream_schema(path)?;
    let rows = messages.iter().map(|m| m.rows).sum();
    let dataset = Dataset {
        dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        schema,
        shards: vec![Shard {
            path: path.to_path_buf(),
            rows,
            version,
            messages,
        }],
        rows,
        held: Default::default(),
    };
    Ok((rows, dataset.read_shard(0, None)?))
}

impl Dataset {
    /// Open the dataset `kiln run` wrote in `dir` (Arrow shards), from its
    /// manifest.
    pub fn open(dir: &Path) -> Result<Dataset> {
        let manifest = Manifest::read(dir)?.ok_or_else(|| {
            Error::Config(format!(
                "{} has no manifest.json: not a finished kiln dataset (run `kiln run` to the end, or `kiln commit`)",
                dir.display()
            ))
        })?;
        if manifest.format != OutputFormat::Arrow {
            return Err(Error::Config(format!(
                "{} holds Parquet shards; the trainer reads Arrow shards (output.format = \"arrow\")",
                dir.display()
            )));
        }
        let problems = crate::dataset::verify_shards(dir, &manifest);
        if !problems.is_empty() {
            return Err(crate::dataset::damaged(dir, &problems));
        }
        let mut shards = Vec::new();
        let mut schema: Option<SchemaRef> = None;
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            let (messages, version) = index_stream(&path)?;
            if schema.is_none() {
                schema = Some(stream_schema(&path)?);
            }
            let rows: u64 = messages.iter().map(|m| m.rows).sum();
            if rows != s.rows {
                return Err(Error::Config(format!(
                    "{}: {rows} rows, the manifest says {}",
                    path.display(),
                    s.rows
                )));
            }
            shards.push(Shard {
                path,
                rows,
                version,
                messages,
            });
        }
        let schema =
            schema.ok_or_else(|| Error::Config(format!("{} has no shards", dir.display())))?;
        let rows = shards
            .iter()
            .try_fold(0u64, |total, s| total.checked_add(s.rows))
            .ok_or_else(|| Error::Execution(format!("{}: more rows than 2^64", dir.display())))?;
        Ok(Dataset {
            dir: dir.to_path_buf(),
            schema,
            shards,
            rows,
            held: Default::default(),
        })
    }

    /// The rows of each shard on `side` of the split. The first call for a
    /// share reads every shard's `sample_id` column.
    pub fn rows_on(&self, side: Option<Holdout>) -> Result<Arc<Vec<u64>>> {
        let all = || Arc::new(self.shards.iter().map(|s| s.rows).collect::<Vec<_>>());
        let Some(side) = side else { return Ok(all()) };
        if side.share <= 0.0 {
            return Ok(match side.held {
                true => Arc::new(vec![0; self.shards.len()]),
                false => all(),
            });
        }
        let mut memo = self.held.lock().expect("not poisoned");
        let held = match memo.get(&side.share.to_bits()) {
            Some(h) => h.clone(),
            None => {
                let id = self.schema.index_of("sample_id").map_err(|_| {
                    Error::Config(format!(
                        "the dataset {} has no `sample_id` column to split by",
                        self.dir.display()
                    ))
                })?;
                let mut held = Vec::with_capacity(self.shards.len());
                for i in 0..self.shards.len() {
                    let b = self.read_shard(i, Some(&[id]))?;
                    let side = Holdout {
                        share: side.share,
                        held: true,
                    };
                    held.push(on_side(&b, side)?.iter().filter(|&&k| k).count() as u64);
                }
                let held = Arc::new(held);
                memo.insert(side.share.to_bits(), held.clone());
                held
            }
        };
        Ok(Arc::new(match side.held {
            true => held.to_vec(),
            false => self
                .shards
                .iter()
                .zip(held.iter())
                .map(|(s, h)| s.rows - h)
                .collect(),
        }))
    }

    /// Shard `i` whole, its columns `projection` (indices into the schema;
    /// all when `None`), as one batch.
    pub fn read_shard(&self, i: usize, projection: Option<&[usize]>) -> Result<RecordBatch> {
        let shard = &self.shards[i];
        let mut decoder = FileDecoder::new(self.schema.clone(), shard.version);
        if let Some(p) = projection {
            decoder = decoder.with_projection(p.to_vec());
        }
        let mut f = File::open(&shard.path).at("open", &shard.path)?;
        let mut batches = Vec::with_capacity(shard.messages.len());
        for m in &shard.messages {
            let mut buf = vec![0u8; m.meta_len as usize + m.body_len as usize];
            f.seek(SeekFrom::Start(m.offset)).at("seek", &shard.path)?;
            f.read_exact(&mut buf).at("read", &shard.path)?;
            check_claims(&buf, m.meta_len as usize)
                .map_err(|why| Error::Execution(format!("{}: {why}", shard.path.display())))?;
            let block = Block::new(m.offset as i64, m.meta_len, m.body_len);
            let read = ipc(&shard.path, || {
                Ok(decoder.read_record_batch(&block, &Buffer::from(buf))?)
            })?;
            batches.extend(read);
        }
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        // Concatenating builds empty arrays of the schema's types, which
        // panics on some types a damaged schema declares (a union of no
        // fields).
        ipc(&shard.path, || {
            Ok(arrow::compute::concat_batches(&schema, &batches)?)
        })
    }
}

/// Where a loader is: the epoch, and the rows this rank has taken in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub rows: u64,
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub seed: u64,
    pub batch_size: usize,
    /// Shards whose rows are shuffled together (memory holds this many).
    pub group_shards: usize,
    pub rank: usize,
    pub world: usize,
    /// The columns to read; all when `None`.
    pub columns: Option<Vec<String>>,
    /// One side of the validation split; every row when `None`.
    pub holdout: Option<Holdout>,
}

/// A generator for one shuffle, from (seed, epoch, what, index).
fn rng(seed: u64, epoch: u64, what: &str, index: u64) -> ChaCha8Rng {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [seed.to_le_bytes(), epoch.to_le_bytes(), index.to_le_bytes()] {
        h.update(&part);
    }
    h.update(what.as_bytes());
    let d = h.finish();
    ChaCha8Rng::from_seed(d.as_ref()[..32].try_into().expect("32 bytes"))
}

/// The loaded group: its rows (permuted order) and data.
struct Group {
    index: usize,
    /// Row of `data` for each position of the group's permuted order.
    order: Vec<u32>,
    data: RecordBatch,
}

pub struct Loader {
    dataset: Arc<Dataset>,
    cfg: LoaderConfig,
    projection: Option<Vec<usize>>,
    /// Each shard's rows on the loader's side of the split.
    rows: Arc<Vec<u64>>,
    position: Position,
    group: Option<Group>,
}

impl Loader {
    pub fn new(dataset: Arc<Dataset>, cfg: LoaderConfig) -> Result<Loader> {
        if cfg.batch_size == 0 || cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(Error::Config(format!(
                "loader: batch_size {} and rank {} of world {} do not make a loader",
                cfg.batch_size, cfg.rank, cfg.world
            )));
        }
        let projection = match &cfg.columns {
            None => None,
            Some(cols) => Some(
                cols.iter()
                    .map(|c| {
                        dataset.schema.index_of(c).map_err(|_| {
                            Error::Config(format!(
                                "the dataset {} has no column `{c}`",
                                dataset.dir.display()
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let rows = dataset.rows_on(cfg.holdout)?;
        Ok(Loader {
            dataset,
            cfg,
            projection,
            rows,
            position: Position::default(),
            group: None,
        })
    }

    /// The rows of an epoch, all ranks together.
    pub fn epoch_rows(&self) -> u64 {
        self.rows.iter().sum()
    }

    /// This rank's rows among the first `n` rows of an epoch's order.
    pub fn rank_share(&self, n: u64) -> u64 {
        self.rank_rows(0, n.min(self.epoch_rows()))
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// Continue from `position` (a saved one): the next batch is the one an
    /// uninterrupted run would have had there.
    pub fn seek(&mut self, position: Position) {
        self.position = position;
        self.group = None;
    }

    /// The groups of an epoch: shard indices, permuted, `group_shards` at a
    /// time.
    fn groups(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut shards: Vec<usize> = (0..self.dataset.shards.len()).collect();
        shards.shuffle(&mut rng(self.cfg.seed, epoch, "shards", 0));
        shards
            .chunks(self.cfg.group_shards.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Rows of a group of `n` rows starting at global position `first` that
    /// go to this rank.
    fn rank_rows(&self, first: u64, n: u64) -> u64 {
        let (w, r) = (self.cfg.world as u64, self.cfg.rank as u64);
        // Positions q in [first, first + n) with q % w == r.
        let count_below = |q: u64| q / w + (q % w > r) as u64;
        count_below(first + n) - count_below(first)
    }

    /// The group holding this rank's next row in the epoch: its index,
    /// the global position of its first row, and this rank's rows before it.
    fn locate(&self, groups: &[Vec<usize>]) -> Option<(usize, u64, u64)> {
        let mut first = 0u64;
        let mut before = 0u64;
        for (g, shards) in groups.iter().enumerate() {
            let n: u64 = shards.iter().map(|&s| self.rows[s]).sum();
            let mine = self.rank_rows(first, n);
            if self.position.rows < before + mine {
                return Some((g, first, before));
            }
            first += n;
            before += mine;
        }
        None
    }

    /// The next batch of this rank (`batch_size` rows, fewer only at the
    /// end of an epoch), or `None` once the epoch is over: the loader then
    /// stands at the start of the next one.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let epoch = self.position.epoch;
        let groups = self.groups(epoch);
        let (w, r) = (self.cfg.world as u64, self.cfg.rank as u64);
        let mut parts = Vec::new();
        let mut need = self.cfg.batch_size;
        while need > 0 {
            let Some((g, first, before)) = self.locate(&groups) else {
                break;
            };
            if self.group.as_ref().is_none_or(|x| x.index != g) {
                self.group = Some(self.load_group(epoch, g, &groups[g])?);
            }
            let group = self.group.as_ref().expect("loaded");
            // This rank's positions in the group: start, start + w, ...
            let start = (r + w - first % w) % w;
            let mut local = start + (self.position.rows - before) * w;
            let mut take = Vec::with_capacity(need);
            while take.len() < need && (local as usize) < group.order.len() {
                take.push(group.order[local as usize]);
                local += w;
            }
            need -= take.len();
            self.position.rows += take.len() as u64;
            parts.push(arrow::compute::take_record_batch(
                &group.data,
                &UInt32Array::from(take),
            )?);
        }
        if parts.is_empty() {
            self.position = Position {
                epoch: epoch + 1,
                rows: 0,
            };
            self.group = None;
            return Ok(None);
        }
        Ok(Some(arrow::compute::concat_batches(
            &parts[0].schema(),
            &parts,
        )?))
    }

    fn load_group(&self, epoch: u64, g: usize, shards: &[usize]) -> Result<Group> {
        let parts = shards
            .iter()
            .map(|&s| self.dataset.read_shard(s, self.projection.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        let schema = match &self.projection {
            Some(p) => Arc::new(self.dataset.schema.project(p)?),
            None => self.dataset.schema.clone(),
        };
        let data = arrow::compute::concat_batches(&schema, &parts)?;
        let mut order: Vec<u32> = (0..data.num_rows() as u32).collect();
        order.shuffle(&mut rng(self.cfg.seed, epoch, "rows", g as u64));
        // The permutation of all the group's rows, then those on this side:
        // the order of a row does not depend on the split's share.
        if let Some(side) = self.cfg.holdout {
            let keep = on_side(&data, side)?;
            order.retain(|&r| keep[r as usize]);
        }
        Ok(Group {
            index: g,
            order,
            data,
        })
    }
}

/// A [`Loader`] running ahead on its own thread, `depth` batches at most:
/// reading and decoding overlap the training step. The batches and
/// positions are the loader's own, in the same order.
pub struct Prefetcher {
    rx: std::sync::mpsc::Receiver<Result<(Option<RecordBatch>, Position)>>,
    position: Position,
    _thread: std::thread::JoinHandle<()>,
}

impl Prefetcher {
    pub fn new(mut loader: Loader, depth: usize) -> Prefetcher {
        let position = loader.position();
        let (tx, rx) = std::sync::mpsc::sync_channel(depth.max(1));
        let thread = std::thread::spawn(move || {
            loop {
                let next = loader.next_batch().map(|b| (b, loader.position()));
                let failed = next.is_err();
                // The receiver is gone: training stopped.
                if tx.send(next).is_err() || failed {
                    return;
                }
            }
        });
        Prefetcher {
            rx,
            position,
            _thread: thread,
        }
    }

    /// As [`Loader::next_batch`].
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let (batch, position) = self
            .rx
            .recv()
            .map_err(|_| Error::Execution("the loader thread stopped".into()))??;
        self.position = position;
        Ok(batch)
    }

    /// The position after the last batch taken (what a checkpoint saves).
    pub fn position(&self) -> Position {
        self.position
    }
}
