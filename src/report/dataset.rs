//! The page of a dataset: what the manifest says (rows, shards, bytes,
//! counts, the pipeline), each shard's state, the rejects, statistics and a
//! seeded sample of rows.
//!
//! What is read: the manifest, `dataset_info.json`, the rejects file, and
//! the shards chosen for the sample. Shards are taken in an order drawn
//! from the seed until they hold `max(50 x samples, 10,000)` rows (every
//! shard with `--full`); the statistics (token lengths, labels,
//! augmentations) are over the rows of those shards, and the page says so.
//! Each shard read is hashed as it streams and compared with the
//! manifest's SHA-256; every other shard is checked for presence and size.
//! Rows are sampled with a reservoir over the sample's originals (augment
//! 0, window 0), each with its copies and windows (rows whose `sample_id`
//! is the original's followed by `#`); a second pass over the shards of the
//! sampled mixed copies fetches their partners. Memory holds one record batch and
//! the sampled rows (each copied out of its batch), whatever the dataset's
//! size.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::html::{Page, cell, escape};
use super::row::{self, Group, Row};
use super::rows;
use super::{Options, Outcome};
use crate::dataset::{Manifest, OutputFormat};
use crate::error::{Error, Result};

/// Reads through, counting the bytes into `count` and hashing them.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
    hash: ring::digest::Context,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// What became of a shard.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardState {
    /// Read whole; its bytes hash to the manifest's SHA-256.
    Verified,
    /// Not read; present with the manifest's size.
    Present,
    Missing,
    /// Present with another size than the manifest's.
    WrongSize(u64),
    /// Read whole; its SHA-256 differs from the manifest's.
    WrongChecksum(String),
    /// Its bytes could not be read as a shard.
    Unreadable(String),
}

impl ShardState {
    fn problem(&self) -> Option<String> {
        Some(match self {
            ShardState::Verified | ShardState::Present => return None,
            ShardState::Missing => "missing".into(),
            ShardState::WrongSize(n) => format!("{n} bytes on disk, not the manifest's"),
            ShardState::WrongChecksum(h) => {
                format!("damaged: its SHA-256 is {h}, not the manifest's")
            }
            ShardState::Unreadable(e) => format!("unreadable: {e}"),
        })
    }
}

/// Streams every batch of a shard through `visit`; the shard's state.
fn scan(
    path: &Path,
    format: OutputFormat,
    want_sha: &str,
    count: &Rc<Cell<u64>>,
    visit: &mut dyn FnMut(&RecordBatch),
) -> ShardState {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ShardState::Missing,
        Err(e) => return ShardState::Unreadable(e.to_string()),
    };
    let mut counted = Counted {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        count: count.clone(),
        hash: ring::digest::Context::new(&ring::digest::SHA256),
    };
    let read: std::result::Result<(), String> = match format {
        OutputFormat::Arrow => (|| {
            let reader = arrow::ipc::reader::StreamReader::try_new(&mut counted, None)
                .map_err(|e| e.to_string())?;
            for batch in reader {
                visit(&batch.map_err(|e| e.to_string())?);
            }
            Ok(())
        })(),
        OutputFormat::Parquet => (|| {
            let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
            let len = f.metadata().map_err(|e| e.to_string())?.len();
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .and_then(|b| b.build())
                .map_err(|e| e.to_string())?;
            count.set(count.get() + len);
            for batch in reader {
                visit(&batch.map_err(|e| e.to_string())?);
            }
            Ok(())
        })(),
    };
    // The rest of the file, for the checksum (a stream's end marker, or
    // the whole file for Parquet, which reads by offset).
    let rest = std::io::copy(&mut counted, &mut std::io::sink());
    let sha = hex::encode(counted.hash.finish().as_ref());
    match (read, rest) {
        _ if sha != want_sha => ShardState::WrongChecksum(sha),
        (Err(e), _) => ShardState::Unreadable(e),
        (_, Err(e)) => ShardState::Unreadable(e.to_string()),
        _ => ShardState::Verified,
    }
}

/// Whatever is counted over the rows read.
#[derive(Default)]
pub struct Stats {
    pub rows: u64,
    /// Tokens per row (`length`).
    pub lengths: BTreeMap<u64, u64>,
    /// Originals per label, then every row per label.
    pub labels_before: BTreeMap<String, u64>,
    pub labels_after: BTreeMap<String, u64>,
    /// Copies per augmentation (`augmentation`, `mix_mode`, or "copy").
    pub copies: BTreeMap<String, u64>,
}

/// The base id of a row: its `sample_id` up to the first `#`.
fn base_id(id: &str) -> &str {
    id.split('#').next().unwrap_or(id)
}

/// One row copied out of its batch.
fn take(batch: &RecordBatch, row: usize) -> Result<RecordBatch> {
    Ok(arrow::compute::take_record_batch(
        batch,
        &UInt32Array::from(vec![row as u32]),
    )?)
}

/// The sampler's state: a reservoir of groups, filled as shards stream.
struct Sampler {
    k: usize,
    rng: ChaCha8Rng,
    seen: u64,
    groups: Vec<Group>,
    /// Base id -> slot in `groups`.
    slots: HashMap<String, usize>,
    /// The shard being read.
    shard: usize,
}

/// Rows a group keeps besides its original (copies, windows).
const MEMBERS: usize = 8;

impl Sampler {
    fn visit(&mut self, batch: &RecordBatch, stats: &mut Stats) -> Result<()> {
        let ids = batch
            .column_by_name("sample_id")
            .and_then(|c| c.as_string_opt::<i32>().cloned());
        let num = |name: &str| row::u64_column(batch, name);
        let augment = num("augment");
        let window = num("window");
        let length = num("length");
        let labels = row::label_column(batch, "label");
        let method =
            row::str_column(batch, "augmentation").or_else(|| row::str_column(batch, "mix_mode"));
        for i in 0..batch.num_rows() {
            stats.rows += 1;
            if let Some(l) = length.as_ref().and_then(|c| c[i]) {
                *stats.lengths.entry(l).or_default() += 1;
            }
            let copy = augment.as_ref().and_then(|c| c[i]).unwrap_or(0) > 0;
            let first_window = window.as_ref().and_then(|c| c[i]).unwrap_or(0) == 0;
            if first_window {
                if let Some(label) = labels.as_ref().map(|l| l(i)) {
                    let label = label.unwrap_or_else(|| "(none)".into());
                    if !copy {
                        *stats.labels_before.entry(label.clone()).or_default() += 1;
                    }
                    *stats.labels_after.entry(label).or_default() += 1;
                }
                if copy {
                    let m = method
                        .as_ref()
                        .and_then(|m| m[i].clone())
                        .unwrap_or_else(|| "copy".into());
                    *stats.copies.entry(m).or_default() += 1;
                }
            }
            let Some(ids) = &ids else { continue };
            let id = ids.value(i);
            if !copy && first_window {
                let j = self.seen;
                self.seen += 1;
                let slot = if (j as usize) < self.k {
                    self.groups.push(Group::default());
                    Some(self.groups.len() - 1)
                } else {
                    let r = self.rng.random_range(0..=j);
                    (r < self.k as u64).then_some(r as usize)
                };
                if let Some(s) = slot {
                    let old = std::mem::take(&mut self.groups[s]);
                    if let Some(o) = old.original {
                        self.slots.remove(o.id.as_str());
                    }
                    self.groups[s].original = Some(Row::new(id, take(batch, i)?));
                    self.groups[s].shard = self.shard;
                    self.slots.insert(id.to_string(), s);
                }
            } else if let Some(&s) = self.slots.get(base_id(id))
                && self.groups[s].members.len() < MEMBERS
            {
                self.groups[s].members.push(Row::new(id, take(batch, i)?));
            }
        }
        Ok(())
    }
}

/// The shards in an order drawn from the seed, as many as `opts` asks.
fn choose(manifest: &Manifest, opts: &Options) -> Vec<usize> {
    let mut order: Vec<usize> = (0..manifest.shards.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(opts.seed ^ 0x7265_706f_7274));
    if opts.full {
        order.sort_unstable();
        return order;
    }
    let budget = (opts.samples as u64 * 50).max(10_000);
    let mut rows = 0;
    let mut chosen = Vec::new();
    for i in order {
        if rows >= budget && !chosen.is_empty() {
            break;
        }
        rows += manifest.shards[i].rows;
        chosen.push(i);
    }
    chosen.sort_unstable();
    chosen
}

/// The rejects file grouped by (stage, kind): count and the first three.
type RejectGroups = BTreeMap<(String, String), (u64, Vec<(String, String)>)>;

fn read_rejects(path: &Path, count: &Rc<Cell<u64>>) -> std::result::Result<RejectGroups, String> {
    let mut groups = RejectGroups::new();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(groups),
        Err(e) => return Err(e.to_string()),
    };
    let counted = Counted {
        inner: std::io::BufReader::new(file),
        count: count.clone(),
        hash: ring::digest::Context::new(&ring::digest::SHA256),
    };
    let reader =
        arrow::ipc::reader::StreamReader::try_new(counted, None).map_err(|e| e.to_string())?;
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let col = |n: &str| row::str_column(&batch, n).unwrap_or_default();
        let (stage, kind, source, id, message) = (
            col("stage"),
            col("kind"),
            col("source"),
            col("sample_id"),
            col("message"),
        );
        for i in 0..batch.num_rows() {
            let key = (
                stage.get(i).cloned().flatten().unwrap_or_default(),
                kind.get(i).cloned().flatten().unwrap_or_default(),
            );
            let g = groups.entry(key).or_default();
            g.0 += 1;
            if g.1.len() < 3 {
                let src = source
                    .get(i)
                    .cloned()
                    .flatten()
                    .or_else(|| id.get(i).cloned().flatten())
                    .unwrap_or_default();
                g.1.push((src, message.get(i).cloned().flatten().unwrap_or_default()));
            }
        }
    }
    Ok(groups)
}

/// A unix time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: u64) -> String {
    let (days, rest) = ((secs / 86400) as i64, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

pub fn report(dir: &Path, opts: &Options) -> Result<Outcome> {
    let manifest = Manifest::read(dir)?.ok_or_else(|| {
        Error::Output(format!(
            "{} has no manifest.json: not a finished kiln dataset (a run still going, or killed before its commit: run it again to finish it)",
            dir.display()
        ))
    })?;
    let count = Rc::new(Cell::new(0u64));
    let mut problems: Vec<String> = Vec::new();
    let mut states: Vec<ShardState> = vec![ShardState::Present; manifest.shards.len()];
    for (s, state) in manifest.shards.iter().zip(states.iter_mut()) {
        *state = match std::fs::metadata(dir.join(&s.file)) {
            Ok(m) if m.len() == s.bytes => ShardState::Present,
            Ok(m) => ShardState::WrongSize(m.len()),
            Err(_) => ShardState::Missing,
        };
    }
    let chosen = choose(&manifest, opts);
    let mut stats = Stats::default();
    let mut sampler = Sampler {
        k: opts.samples,
        rng: ChaCha8Rng::seed_from_u64(opts.seed),
        seen: 0,
        groups: Vec::new(),
        slots: HashMap::new(),
        shard: 0,
    };
    let mut schema: Option<SchemaRef> = None;
    let mut failure: Option<Error> = None;
    let mut read = Vec::new();
    for &i in &chosen {
        if states[i] == ShardState::Missing {
            continue;
        }
        let s = &manifest.shards[i];
        read.push(s.file.clone());
        sampler.shard = i;
        let mut visit = |b: &RecordBatch| {
            schema.get_or_insert_with(|| b.schema());
            if failure.is_none()
                && let Err(e) = sampler.visit(b, &mut stats)
            {
                failure = Some(e);
            }
        };
        let state = scan(
            &dir.join(&s.file),
            manifest.format,
            &s.sha256,
            &count,
            &mut visit,
        );
        if !matches!(states[i], ShardState::WrongSize(_)) || state != ShardState::Verified {
            states[i] = state;
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Partners of mixed copies, from the shards of those copies: mixing
    // pairs the rows of one batch, which lands in one task's shards (a
    // partner past a shard boundary is said to be in a shard not read).
    let mut groups = sampler.groups;
    let wanted: HashSet<String> = groups
        .iter()
        .flat_map(|g| g.members.iter())
        .filter_map(|m| m.str("mix_partner"))
        .collect();
    let mut partners: HashMap<String, Row> = HashMap::new();
    if !wanted.is_empty() {
        let mixed: HashSet<usize> = groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m.str("mix_partner").is_some()))
            .map(|g| g.shard)
            .collect();
        for &i in chosen.iter().filter(|i| mixed.contains(i)) {
            if matches!(states[i], ShardState::Missing | ShardState::Unreadable(_)) {
                continue;
            }
            let s = &manifest.shards[i];
            let mut visit = |b: &RecordBatch| {
                let Some(ids) = row::str_column(b, "sample_id") else {
                    return;
                };
                for (r, id) in ids.iter().enumerate() {
                    if let Some(id) = id
                        && wanted.contains(id)
                        && !partners.contains_key(id)
                        && let Ok(row) = take(b, r)
                    {
                        partners.insert(id.clone(), Row::new(id, row));
                    }
                }
            };
            scan(
                &dir.join(&s.file),
                manifest.format,
                &s.sha256,
                &count,
                &mut visit,
            );
        }
    }
    for g in &mut groups {
        g.partners = g
            .members
            .iter()
            .filter_map(|m| m.str("mix_partner"))
            .filter_map(|p| partners.get(&p).cloned())
            .collect();
    }
    let rejects = read_rejects(&dir.join(&manifest.rejects_file), &count).unwrap_or_else(|e| {
        problems.push(format!(
            "the rejects file {} is unreadable: {e}",
            manifest.rejects_file
        ));
        Default::default()
    });

    // Problems first: what is wrong with this dataset.
    for (s, state) in manifest.shards.iter().zip(&states) {
        if let Some(p) = state.problem() {
            problems.push(format!("shard {}: {p}", s.file));
        }
    }
    let t = &manifest.totals;
    let invariant = t.samples_in == t.samples_out + t.rejected + t.filtered;
    if !invariant {
        problems.push(format!(
            "the counts do not add up: {} in, but {} out + {} rejected + {} filtered",
            t.samples_in, t.samples_out, t.rejected, t.filtered
        ));
    }
    if t.samples_in > 0 && t.rejected == t.samples_in {
        problems.push(format!(
            "every sample was rejected ({}): the dataset has no rows; the rejects below say why",
            t.rejected
        ));
    } else if manifest.totals.rows == 0 {
        problems.push("the dataset has no rows".into());
    }

    let info: Option<serde_json::Value> = std::fs::read(dir.join("dataset_info.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let pipeline: Option<crate::config::PipelineConfig> =
        serde_json::from_value(manifest.pipeline.clone()).ok();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).ok();

    let mut page = Page::new(&format!("kiln report: {}", dir.display()));
    if !problems.is_empty() {
        page.h2("Problems", "problems");
        for p in &problems {
            page.problem(p);
        }
    }
    page.h2("Summary", "summary");
    let committed = std::fs::metadata(dir.join("manifest.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(|| "unknown".into(), |d| utc(d.as_secs()));
    let rows_read: u64 = chosen.iter().map(|&i| manifest.shards[i].rows).sum();
    page.table(
        &["", ""],
        &[
            vec!["kind".into(), manifest.kind.clone()],
            vec!["rows".into(), t.rows.to_string()],
            vec![
                "samples".into(),
                cell(format!(
                    "{} in = {} out + {} rejected + {} filtered {}",
                    t.samples_in,
                    t.samples_out,
                    t.rejected,
                    t.filtered,
                    if invariant {
                        "<span class=\"ok\">\u{2713} holds</span>"
                    } else {
                        "<span class=\"bad\">\u{2717} does not hold</span>"
                    }
                )),
            ],
            vec!["tokens".into(), t.tokens.to_string()],
            vec![
                "shards".into(),
                format!("{} ({:?})", manifest.shards.len(), manifest.format),
            ],
            vec!["bytes".into(), manifest.bytes.to_string()],
            vec!["seed".into(), manifest.seed.to_string()],
            vec!["plan".into(), manifest.plan.clone()],
            vec!["committed".into(), committed],
            vec!["kiln".into(), manifest.kiln.clone()],
            vec![
                "read for this page".into(),
                format!(
                    "{} of {} shards, {} of {} rows",
                    read.len(),
                    manifest.shards.len(),
                    rows_read,
                    t.rows
                ),
            ],
        ],
    );
    page.h3("Schema");
    let features = info.as_ref().map(|i| &i["features"]);
    let schema_rows: Vec<Vec<String>> = match &schema {
        Some(schema) => schema
            .fields()
            .iter()
            .map(|f| {
                let feature = features
                    .and_then(|fs| fs.get(f.name()))
                    .cloned()
                    .unwrap_or_else(|| crate::schema::hf_field_feature(f));
                vec![
                    f.name().clone(),
                    format!("{}", f.data_type()),
                    row::feature_text(&feature),
                ]
            })
            .collect(),
        None => features
            .and_then(|f| f.as_object())
            .map(|fs| {
                fs.iter()
                    .map(|(k, v)| vec![k.clone(), String::new(), row::feature_text(v)])
                    .collect()
            })
            .unwrap_or_default(),
    };
    page.table(&["column", "Arrow type", "HF feature"], &schema_rows);
    if !manifest.pipeline.is_null() {
        page.h3("Pipeline");
        let text = toml::to_string(&without_nulls(manifest.pipeline.clone()))
            .unwrap_or_else(|_| manifest.pipeline.to_string());
        page.raw(&format!(
            "<details><summary>as run (command-line overrides applied; output and storage settings left out)</summary><pre>{}</pre></details>",
            escape(&text)
        ));
    }
    page.h3("Shards");
    let shard_rows: Vec<Vec<String>> = manifest
        .shards
        .iter()
        .zip(&states)
        .map(|(s, st)| {
            let state = match st {
                ShardState::Verified => {
                    cell("<span class=\"ok\">read, SHA-256 matches</span>".into())
                }
                ShardState::Present => "not read; size matches".into(),
                other => cell(format!(
                    "<span class=\"bad\">{}</span>",
                    escape(&other.problem().unwrap_or_default())
                )),
            };
            vec![
                s.file.clone(),
                s.rows.to_string(),
                s.bytes.to_string(),
                s.sha256.chars().take(16).collect(),
                state,
            ]
        })
        .collect();
    page.table(&["file", "rows", "bytes", "sha256", "state"], &shard_rows);

    page.h2("Rejects", "rejects");
    if rejects.is_empty() {
        page.p(&format!(
            "No sample was rejected ({} rejected in the manifest).",
            t.rejected
        ));
    } else {
        let rows: Vec<Vec<String>> = rejects
            .iter()
            .map(|((stage, kind), (n, first))| {
                let examples = first
                    .iter()
                    .map(|(src, msg)| format!("<code>{}</code>: {}", escape(src), escape(msg)))
                    .collect::<Vec<_>>()
                    .join("<br>");
                vec![stage.clone(), kind.clone(), n.to_string(), cell(examples)]
            })
            .collect();
        page.table(&["stage", "kind", "count", "first samples"], &rows);
    }
    rows::statistics(
        &mut page,
        &stats,
        pipeline.as_ref(),
        read.len() < manifest.shards.len(),
    );
    rows::samples(
        &mut page,
        &groups,
        &rows::Context {
            tokenizer: tokenizer.as_ref(),
            pipeline: pipeline.as_ref(),
            opts,
        },
    );
    Ok(Outcome {
        html: page.finish(),
        bytes_read: count.get(),
        shards_read: read,
        problems,
    })
}

/// `v` without its null values (TOML has none): the pipeline as it would
/// be written.
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// Where a source file named by a row may be, from the pipeline's inputs
/// (a table's `image_root` and `audio_root` first), and whether files may
/// resolve outside it.
pub fn source_roots(pipeline: &crate::config::PipelineConfig) -> Vec<(PathBuf, bool)> {
    let mut roots = Vec::new();
    for i in &pipeline.inputs {
        let allow = i.allow_outside_root;
        for r in [&i.image_root, &i.audio_root].into_iter().flatten() {
            roots.push((PathBuf::from(r), allow));
        }
        if crate::storage::is_url(&i.path) {
            continue;
        }
        let p = Path::new(&i.path);
        roots.push(match p.is_dir() {
            true => (p.to_path_buf(), allow),
            false => (PathBuf::from(crate::storage::glob_root(&i.path)), allow),
        });
    }
    roots.retain(|(r, _)| !crate::storage::is_url(&r.to_string_lossy()));
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_601_600 + 3_723), "2026-12-07 01:02:03 UTC");
    }
}
