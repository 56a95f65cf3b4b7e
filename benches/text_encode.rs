//! kiln's tokenize stage against raw `tokenizers` `encode_batch` on all
//! cores, same tokenizer, same documents, in the same run.
//!
//!     cargo bench --bench text_encode [-- MB]
//!
//! The corpus is generated from a fixed seed (Zipf-distributed synthetic
//! words); the tokenizer is trained on it by kiln (vocab 30000).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use kiln::rejects::RejectSink;
use kiln::sources::{RecordBuilder, record_schema};
use kiln::stages::text::tokenize::{Tokenize, TokenizeConfig};
use kiln::stages::{BatchContext, Stage};
use kiln::tokenize::{self, TrainConfig};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn corpus(mb: usize) -> Vec<String> {
    let syllables: Vec<String> = "bcdfghjklmnprstvwz"
        .chars()
        .flat_map(|c| ["a", "e", "i", "o", "u", "ai", "ou", "ei"].map(|v| format!("{c}{v}")))
        .collect();
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let vocab: Vec<String> = (0..40000)
        .map(|_| {
            let n = 1 + rng.next() % 4;
            (0..n)
                .map(|_| syllables[(rng.next() % syllables.len() as u64) as usize].as_str())
                .collect()
        })
        .collect();
    let mut docs = Vec::new();
    let mut bytes = 0;
    while bytes < mb << 20 {
        let n = 20 + rng.next() % 580;
        let words: Vec<&str> = (0..n)
            .map(|_| {
                // Zipf-like rank: heavy head, long tail.
                let r = ((vocab.len() as f64).powf(rng.unit()) - 1.0) as usize;
                vocab[r.min(vocab.len() - 1)].as_str()
            })
            .collect();
        let doc = words.join(" ") + ".";
        bytes += doc.len();
        docs.push(doc);
    }
    docs
}

fn batches(docs: &[String], rows: usize) -> Vec<RecordBatch> {
    let schema = record_schema(&[]);
    docs.chunks(rows)
        .enumerate()
        .map(|(i, chunk)| {
            let mut b = RecordBuilder::new(schema.clone(), &[], "bench");
            for (j, d) in chunk.iter().enumerate() {
                b.push((i * rows + j) as u64, d, &[]);
            }
            b.finish().unwrap().unwrap()
        })
        .collect()
}

fn main() {
    let mb: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(24);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let docs = corpus(mb);
    let bytes: usize = docs.iter().map(String::len).sum();
    let train = TrainConfig::new(30000, 2, vec![]);
    let tokenizer = Arc::new(tokenize::train(&train, docs.iter()).unwrap());
    let config = TokenizeConfig {
        tokenizer: None,
        train: None,
        domain_vocab: None,
        text_column: "text".into(),
        keep_text: false,
        add_special_tokens: false,
    };
    let stage = Tokenize::new(&config, tokenizer.clone());
    let input = batches(&docs, 1024);
    println!(
        "text_encode: {} docs, {:.1} MB, {cores} cores",
        docs.len(),
        bytes as f64 / 1e6
    );

    let raw = || {
        let t = Instant::now();
        let encs = tokenizer
            .encode_batch(docs.iter().map(String::as_str).collect(), false)
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let ids: Vec<u32> = encs
            .iter()
            .flat_map(|e| e.get_ids().iter().copied())
            .collect();
        (secs, ids)
    };
    // The engine's way: worker threads take batches and run the stage.
    let staged = || {
        let t = Instant::now();
        let next = AtomicUsize::new(0);
        let outputs: Vec<Vec<(usize, RecordBatch)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..cores)
                .map(|_| {
                    s.spawn(|| {
                        let mut rejects = RejectSink::discard();
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(b) = input.get(i) else { break };
                            let mut cx = BatchContext {
                                seed: 0,
                                stage: "tokenize",
                                rejects: &mut rejects,
                                filtered: 0,
                            };
                            out.push((i, stage.process(b.clone(), &mut cx).unwrap()));
                        }
                        out
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let secs = t.elapsed().as_secs_f64();
        let mut batches: Vec<(usize, RecordBatch)> = outputs.into_iter().flatten().collect();
        batches.sort_by_key(|(i, _)| *i);
        let ids: Vec<u32> = batches
            .iter()
            .flat_map(|(_, b)| {
                let list = b.column_by_name("input_ids").unwrap().as_list::<i32>();
                list.values().as_primitive::<UInt32Type>().values().to_vec()
            })
            .collect();
        (secs, ids)
    };
    let (mut best_raw, mut best_stage) = (f64::MAX, f64::MAX);
    for round in 0..3 {
        let (r, tr) = raw();
        let (k, tk) = staged();
        assert!(tr == tk, "the same ids both ways");
        println!(
            "round {round}: encode_batch {r:.3}s, kiln tokenize stage {k:.3}s ({} identical ids)",
            tk.len()
        );
        best_raw = best_raw.min(r);
        best_stage = best_stage.min(k);
    }
    let rate = |s: f64| (docs.len() as f64 / s, bytes as f64 / s / 1e6);
    let (rd, rm) = rate(best_raw);
    let (kd, km) = rate(best_stage);
    println!("tokenizers encode_batch: {rd:10.0} docs/s {rm:7.1} MB/s");
    println!("kiln tokenize stage:     {kd:10.0} docs/s {km:7.1} MB/s");
    println!(
        "RATIO kiln stage / encode_batch: {:.2} (target >= 0.90)",
        best_raw / best_stage
    );
}
