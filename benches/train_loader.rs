//! The trainer's loader alone: samples/s over one epoch of a generated
//! dataset shaped like the multimodal one (a 1280-float feature vector,
//! 32 token ids and a label a row; 20 shards of 1000 rows, 100 MB), read
//! synchronously and through the prefetching thread, at batch 64 with two
//! shards shuffled together. The training step it must keep up with is
//! measured by the trainer's own benchmark.
//!
//!     cargo bench --bench train_loader

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Int64Array, ListArray, RecordBatch, StringArray,
    UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use kiln::train::loader::{Dataset, Loader, LoaderConfig, Prefetcher};

const SHARDS: usize = 20;
const ROWS: usize = 1000;
const DIM: usize = 1280;
const TOKENS: usize = 32;

/// Shards and a manifest in `dir`, unless they are there.
fn generate(dir: &Path) {
    if dir.join("manifest.json").exists() {
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("label", DataType::Int64, false),
        Field::new(
            "image_features",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                DIM as i32,
            ),
            false,
        ),
        Field::new(
            "input_ids",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
            false,
        ),
    ]));
    let mut shards = Vec::new();
    for s in 0..SHARDS {
        let n = ROWS;
        let ids: Vec<String> = (0..n).map(|i| format!("gen:{}", s * ROWS + i)).collect();
        let values: Vec<f32> = (0..n * DIM)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let tokens: Vec<u32> = (0..n * TOKENS).map(|i| (i % 5000) as u32).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| (i % 3) as i64))),
            Arc::new(
                FixedSizeListArray::try_new(
                    Arc::new(Field::new("item", DataType::Float32, true)),
                    DIM as i32,
                    Arc::new(Float32Array::from(values)),
                    None,
                )
                .unwrap(),
            ),
            Arc::new(
                ListArray::try_new(
                    Arc::new(Field::new("item", DataType::UInt32, true)),
                    OffsetBuffer::from_lengths(std::iter::repeat_n(TOKENS, n)),
                    Arc::new(UInt32Array::from(tokens)),
                    None,
                )
                .unwrap(),
            ),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let file = format!("data-{s:05}-of-{SHARDS:05}.arrow");
        let f = std::fs::File::create(dir.join(&file)).unwrap();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(f, &schema).unwrap();
        // Batches of 100 rows, as kiln's shards hold several.
        for off in (0..n).step_by(100) {
            w.write(&batch.slice(off, 100)).unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::metadata(dir.join(&file)).unwrap().len();
        shards.push(serde_json::json!({
            "file": file, "task": s, "rows": n, "documents": n, "bytes": bytes, "sha256": ""
        }));
    }
    let manifest = serde_json::json!({
        "kiln": "bench", "kind": "multimodal", "format": "arrow", "plan": "", "seed": 0,
        "tasks": SHARDS, "shards": shards, "rejects_file": "rejects.arrow",
        "totals": {"samples_in": SHARDS * ROWS, "samples_out": SHARDS * ROWS, "rejected": 0,
                   "filtered": 0, "rows": SHARDS * ROWS, "tokens": 0, "rejected_by": {}},
        "bytes": 0
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

fn config(seed: u64) -> LoaderConfig {
    LoaderConfig {
        seed,
        batch_size: 64,
        group_shards: 2,
        rank: 0,
        world: 1,
        columns: Some(vec![
            "image_features".into(),
            "input_ids".into(),
            "label".into(),
        ]),
        holdout: None,
    }
}

fn main() {
    let dir = Path::new("bench-data/train-loader");
    generate(dir);
    let ds = Arc::new(Dataset::open(dir).unwrap());
    println!(
        "== {} rows in {} shards; batch 64, 2 shards shuffled together",
        ds.rows,
        ds.shards.len()
    );
    for round in 1..=3 {
        let mut l = Loader::new(ds.clone(), config(round)).unwrap();
        let t = Instant::now();
        let mut n = 0;
        while let Some(b) = l.next_batch().unwrap() {
            n += b.num_rows();
        }
        let direct = n as f64 / t.elapsed().as_secs_f64();
        let mut p = Prefetcher::new(Loader::new(ds.clone(), config(round)).unwrap(), 4);
        let t = Instant::now();
        let mut m = 0;
        while let Some(b) = p.next_batch().unwrap() {
            m += b.num_rows();
        }
        let ahead = m as f64 / t.elapsed().as_secs_f64();
        assert_eq!(n, ds.rows as usize);
        assert_eq!(m, n);
        println!("round {round}: loader {direct:.0} samples/s, prefetching {ahead:.0} samples/s");
    }
}
