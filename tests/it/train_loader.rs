//! The trainer's loader on a dataset kiln built: shards read by their index
//! equal arrow's stream reader, every row seen once per epoch across ranks,
//! the order a function of (seed, epoch), and a saved position resuming to
//! exactly the batches an uninterrupted loader gives.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use arrow::array::{AsArray, RecordBatch};
use kiln::train::loader::{Dataset, Loader, LoaderConfig, Position, Prefetcher};

/// The text fixtures (120 documents) tokenized, 7 rows a shard.
fn dataset(s: &Scratch, format: &str) -> std::path::PathBuf {
    let out = s.path(format);
    let pipeline = format!(
        r#"seed = 1
[[inputs]]
path = "{text}/*.jsonl"
columns = ["lang"]

[[stages]]
type = "tokenize"
tokenizer = "{text}/tokenizer.json"

[output]
path = "{out}"
format = "{format}"
max_shard_rows = 7
"#,
        text = fixture_path("text"),
        out = out.display()
    );
    let p = s.write(&format!("{format}.toml"), pipeline);
    assert_ok(&s.kiln(&["run", p.to_str().unwrap(), "-q"]));
    out
}

fn ids(b: &RecordBatch) -> Vec<String> {
    let c = b.column_by_name("sample_id").unwrap().as_string::<i32>();
    (0..b.num_rows()).map(|i| c.value(i).to_string()).collect()
}

fn loader(ds: &Arc<Dataset>, seed: u64, rank: usize, world: usize) -> Loader {
    Loader::new(
        ds.clone(),
        LoaderConfig {
            seed,
            batch_size: 5,
            group_shards: 2,
            rank,
            world,
            columns: Some(vec!["sample_id".into(), "input_ids".into()]),
            holdout: None,
        },
    )
    .unwrap()
}

/// This rank's batches of the epoch the loader stands in.
fn epoch(l: &mut Loader) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    while let Some(b) = l.next_batch().unwrap() {
        assert_eq!(b.num_columns(), 2, "only the asked columns");
        out.push(ids(&b));
    }
    out
}

#[test]
fn shards_read_by_index_equal_the_stream_reader() {
    let s = Scratch::new();
    let dir = dataset(&s, "arrow");
    let ds = Dataset::open(&dir).unwrap();
    assert_eq!(ds.rows, 120);
    assert!(ds.shards.len() >= 17, "{} shards", ds.shards.len());
    for (i, shard) in ds.shards.iter().enumerate() {
        let f = std::fs::File::open(&shard.path).unwrap();
        let r = arrow::ipc::reader::StreamReader::try_new(f, None).unwrap();
        let schema = r.schema();
        let batches: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
        let want = arrow::compute::concat_batches(&schema, &batches).unwrap();
        assert_eq!(ds.read_shard(i, None).unwrap(), want, "shard {i}");
        let ids_only = ds.read_shard(i, Some(&[0])).unwrap();
        assert_eq!(ids_only.column(0), want.column(0));
    }
}

#[test]
fn every_row_once_per_epoch_across_ranks_in_a_seeded_order() {
    let s = Scratch::new();
    let ds = Arc::new(Dataset::open(&dataset(&s, "arrow")).unwrap());
    let world = 3;
    let mut seen = Vec::new();
    let mut orders = Vec::new();
    for rank in 0..world {
        let mut l = loader(&ds, 9, rank, world);
        let e0 = epoch(&mut l);
        assert_eq!(l.position(), Position { epoch: 1, rows: 0 });
        let e1 = epoch(&mut l);
        // Full batches but the last of an epoch.
        for e in [&e0, &e1] {
            for b in &e[..e.len() - 1] {
                assert_eq!(b.len(), 5);
            }
        }
        let flat0: Vec<String> = e0.concat();
        let flat1: Vec<String> = e1.concat();
        assert_eq!(flat0.len(), 40, "120 rows over 3 ranks");
        assert_ne!(flat0, flat1, "each epoch its own order");
        let mut sorted0 = flat0.clone();
        let mut sorted1 = flat1.clone();
        sorted0.sort();
        sorted1.sort();
        seen.extend(flat0.iter().cloned());
        orders.push((flat0, sorted0 == sorted1));
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 120);
    assert_eq!(unique.len(), 120, "no row twice, none left out");
    // The same seed gives the same order; another seed another.
    let again = epoch(&mut loader(&ds, 9, 0, world)).concat();
    assert_eq!(again, orders[0].0);
    let other = epoch(&mut loader(&ds, 10, 0, world)).concat();
    assert_ne!(other, orders[0].0);
    // Not the stored order.
    let stored: Vec<String> = (0..ds.shards.len())
        .flat_map(|i| ids(&ds.read_shard(i, None).unwrap()))
        .collect();
    let mine: Vec<&String> = stored.iter().step_by(world).collect();
    assert_ne!(
        orders[0].0.iter().collect::<Vec<_>>(),
        mine,
        "the rows are shuffled"
    );
}

#[test]
fn a_saved_position_resumes_to_the_same_batches() {
    let s = Scratch::new();
    let ds = Arc::new(Dataset::open(&dataset(&s, "arrow")).unwrap());
    for (world, rank) in [(1, 0), (2, 1)] {
        let mut whole = loader(&ds, 4, rank, world);
        let all: Vec<Vec<String>> = (0..40)
            .filter_map(|_| whole.next_batch().unwrap().map(|b| ids(&b)))
            .collect();
        // Stop after k batches (mid-group, mid-epoch, at an epoch's end),
        // save the position, and continue in a new loader.
        for k in [1, 3, 7, 12, 13, 24, 25] {
            let mut first = loader(&ds, 4, rank, world);
            let mut got: Vec<Vec<String>> = Vec::new();
            for _ in 0..k {
                if let Some(b) = first.next_batch().unwrap() {
                    got.push(ids(&b));
                }
            }
            let saved = serde_json::to_string(&first.position()).unwrap();
            let mut resumed = loader(&ds, 4, rank, world);
            resumed.seek(serde_json::from_str(&saved).unwrap());
            while got.len() < all.len() {
                if let Some(b) = resumed.next_batch().unwrap() {
                    got.push(ids(&b));
                }
            }
            assert_eq!(got, all, "world {world} rank {rank}, resumed after {k}");
        }
    }
}

#[test]
fn a_prefetching_loader_gives_the_same_batches_and_positions() {
    let s = Scratch::new();
    let ds = Arc::new(Dataset::open(&dataset(&s, "arrow")).unwrap());
    let mut direct = loader(&ds, 6, 1, 2);
    let mut ahead = Prefetcher::new(loader(&ds, 6, 1, 2), 3);
    // Two epochs and a bit, the end-of-epoch `None`s included.
    for _ in 0..30 {
        let a = direct.next_batch().unwrap().map(|b| ids(&b));
        let b = ahead.next_batch().unwrap().map(|b| ids(&b));
        assert_eq!(a, b);
        assert_eq!(direct.position(), ahead.position());
    }
    // Started from a saved position, it continues from there.
    let mut resumed = loader(&ds, 6, 1, 2);
    resumed.seek(direct.position());
    let mut ahead = Prefetcher::new(resumed, 2);
    assert_eq!(
        ahead.next_batch().unwrap().map(|b| ids(&b)),
        direct.next_batch().unwrap().map(|b| ids(&b))
    );
}

#[test]
fn datasets_the_loader_cannot_read_are_refused() {
    let s = Scratch::new();
    let e = Dataset::open(&dataset(&s, "parquet"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Parquet shards"), "{e}");
    let e = Dataset::open(Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no manifest.json"), "{e}");
    let ds = Arc::new(Dataset::open(&dataset(&s, "arrow")).unwrap());
    let e = Loader::new(
        ds,
        LoaderConfig {
            seed: 0,
            batch_size: 4,
            group_shards: 1,
            rank: 0,
            world: 1,
            columns: Some(vec!["image_features".into()]),
            holdout: None,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no column `image_features`"), "{e}");
}

#[test]
fn the_split_sides_are_disjoint_and_every_training_row_is_read_once_across_ranks() {
    use kiln::train::loader::{Holdout, held_out};
    let s = Scratch::new();
    let ds = Arc::new(Dataset::open(&dataset(&s, "arrow")).unwrap());
    let share = 0.3;
    let side = |rank, world, held| {
        Loader::new(
            ds.clone(),
            LoaderConfig {
                seed: 5,
                batch_size: 4,
                group_shards: 2,
                rank,
                world,
                columns: Some(vec!["sample_id".into(), "input_ids".into()]),
                holdout: Some(Holdout { share, held }),
            },
        )
        .unwrap()
    };
    let all: HashSet<String> = epoch(&mut side(0, 1, false))
        .into_iter()
        .chain(epoch(&mut side(0, 1, true)))
        .flatten()
        .collect();
    assert_eq!(all.len(), 120, "the two sides make the dataset");
    let train: Vec<String> = epoch(&mut side(0, 1, false))
        .into_iter()
        .flatten()
        .collect();
    assert!(train.iter().all(|id| !held_out(id, share)));
    let held: Vec<String> = epoch(&mut side(0, 1, true)).into_iter().flatten().collect();
    assert!(held.iter().all(|id| held_out(id, share)));
    assert_eq!(train.len() + held.len(), 120);
    assert_eq!(side(0, 1, false).epoch_rows(), train.len() as u64);
    for world in [2, 3] {
        let mut loaders: Vec<Loader> = (0..world).map(|r| side(r, world, false)).collect();
        let batches: Vec<Vec<Vec<String>>> = loaders.iter_mut().map(epoch).collect();
        // Global batch k is the ranks' k-th batches: the epoch's rows
        // [k * 4 * world, (k + 1) * 4 * world) in the one-rank order.
        let mut joined = Vec::new();
        for k in 0..batches[0].len() {
            let mut global: Vec<String> = batches
                .iter()
                .filter_map(|b| b.get(k))
                .flatten()
                .cloned()
                .collect();
            let mut want: Vec<String> = train
                .iter()
                .skip(k * 4 * world)
                .take(4 * world)
                .cloned()
                .collect();
            global.sort();
            want.sort();
            assert_eq!(global, want, "world {world}, batch {k}");
            joined.extend(global);
        }
        joined.sort();
        let mut once = train.clone();
        once.sort();
        assert_eq!(joined, once, "world {world}: every training row once");
        // A position after k global batches resumes there on every rank.
        for (r, l) in loaders.iter_mut().enumerate() {
            let at = l.rank_share(2 * 4 * world as u64);
            l.seek(Position { epoch: 0, rows: at });
            assert_eq!(
                l.next_batch().unwrap().map(|b| ids(&b)),
                batches[r].get(2).cloned()
            );
        }
    }
}
