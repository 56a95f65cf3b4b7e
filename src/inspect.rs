//! `kiln inspect DATASET`: schema, shards, row counts, token-length
//! statistics, rejects by reason, and a few rows decoded back to text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch, RecordBatchReader};
use arrow::datatypes::{SchemaRef, UInt32Type};

use crate::dataset::Manifest;
use crate::dataset::OutputFormat;
use crate::error::{Error, IoContext, Result};

/// The batches of a shard.
type Batches = Box<dyn Iterator<Item = Result<RecordBatch>>>;

/// Batches of one shard, whatever its format.
fn read_shard(path: &Path, format: OutputFormat) -> Result<(SchemaRef, Batches)> {
    let f = File::open(path).at("open", path)?;
    Ok(match format {
        OutputFormat::Arrow => {
            let r = arrow::ipc::reader::StreamReader::try_new(std::io::BufReader::new(f), None)?;
            (r.schema(), Box::new(r.map(|b| b.map_err(Error::from))))
        }
        OutputFormat::Parquet => {
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)?
                .build()?;
            (r.schema(), Box::new(r.map(|b| b.map_err(Error::from))))
        }
    })
}

pub fn inspect(dir: &Path, samples: usize) -> Result<String> {
    let manifest = Manifest::read(dir)?.ok_or_else(|| {
        Error::Output(format!(
            "{} has no manifest.json: not a finished kiln dataset",
            dir.display()
        ))
    })?;
    let problems = crate::dataset::verify_shards(dir, &manifest);
    if !problems.is_empty() {
        return Err(crate::dataset::damaged(dir, &problems));
    }
    let mut out = String::new();
    let t = &manifest.totals;
    writeln!(
        out,
        "dataset   {} ({} kind, {:?} shards, kiln {})",
        dir.display(),
        manifest.kind,
        manifest.format,
        manifest.kiln
    )
    .ok();
    writeln!(
        out,
        "samples   {} in, {} out, {} rejected, {} filtered; {} rows, {} tokens",
        t.samples_in, t.samples_out, t.rejected, t.filtered, t.rows, t.tokens
    )
    .ok();
    writeln!(
        out,
        "shards    {} files, {} bytes",
        manifest.shards.len(),
        manifest.bytes
    )
    .ok();
    for s in &manifest.shards {
        writeln!(
            out,
            "  {}  {:>9} rows  {:>12} bytes  sha256 {}",
            s.file,
            s.rows,
            s.bytes,
            &s.sha256[..16]
        )
        .ok();
    }
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).ok();
    let mut lengths: BTreeMap<u32, u64> = BTreeMap::new();
    let mut shown = Vec::new();
    let mut schema_text = String::new();
    let mut augmented: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for s in &manifest.shards {
        let (schema, batches) = read_shard(&dir.join(&s.file), manifest.format)?;
        if schema_text.is_empty() {
            for f in schema.fields() {
                writeln!(
                    schema_text,
                    "  {}: {}{}",
                    f.name(),
                    f.data_type(),
                    if f.is_nullable() { "" } else { " not null" }
                )
                .ok();
            }
        }
        for batch in batches {
            let batch = batch?;
            if let Some(len) = batch.column_by_name("length") {
                for &l in len.as_primitive::<UInt32Type>().values() {
                    *lengths.entry(l).or_default() += 1;
                }
            }
            // augment_text's copies by method, and those with a note.
            if let (Some(how), Some(note)) = (
                batch
                    .column_by_name("augmentation")
                    .and_then(|c| c.as_string_opt::<i32>()),
                batch
                    .column_by_name("augment_note")
                    .and_then(|c| c.as_string_opt::<i32>()),
            ) {
                for (h, n) in how.iter().zip(note.iter()) {
                    if let Some(h) = h {
                        let e = augmented.entry(h.to_string()).or_default();
                        e.0 += 1;
                        e.1 += n.is_some() as u64;
                    }
                }
            }
            for row in 0..batch.num_rows() {
                if shown.len() >= samples {
                    break;
                }
                shown.push(describe_row(&batch, row, tokenizer.as_ref()));
            }
        }
    }
    writeln!(out, "schema\n{schema_text}").ok();
    if !lengths.is_empty() {
        let n: u64 = lengths.values().sum();
        let sum: u64 = lengths.iter().map(|(l, c)| *l as u64 * c).sum();
        let pct = |p: f64| {
            let target = ((n as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (l, c) in &lengths {
                seen += c;
                if seen >= target {
                    return *l;
                }
            }
            0
        };
        writeln!(
            out,
            "tokens per row  min {}  mean {:.1}  p50 {}  p90 {}  p99 {}  max {}",
            lengths.keys().next().unwrap_or(&0),
            sum as f64 / n as f64,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            lengths.keys().last().unwrap_or(&0)
        )
        .ok();
    }
    if !augmented.is_empty() {
        let parts: Vec<String> = augmented
            .iter()
            .map(|(h, (n, noted))| format!("{h} {n} ({noted} with an augment_note)"))
            .collect();
        writeln!(out, "augmented copies  {}", parts.join(", ")).ok();
    }
    if !t.rejected_by.is_empty() {
        writeln!(out, "rejected ({})", manifest.rejects_file).ok();
        for (k, v) in &t.rejected_by {
            writeln!(out, "  {k:<32} {v}").ok();
        }
    }
    if !shown.is_empty() {
        writeln!(out, "rows").ok();
        for s in shown {
            writeln!(out, "{s}").ok();
        }
    }
    writeln!(
        out,
        "see it   kiln report {} --output report.html  (samples, augmentations, histograms, rejects as one HTML page)",
        dir.display()
    )
    .ok();
    Ok(out)
}

/// An image or audio row: label (by name), the stored image, tensor or
/// waveform, features, spectrogram, augmentation.
fn describe_media_row(batch: &RecordBatch, row: usize, id: &str) -> String {
    use arrow::array::Array;
    let mut parts = Vec::new();
    let class = |name: &str| {
        let col = batch.column_by_name(name)?;
        let col = col.as_primitive_opt::<arrow::datatypes::Int64Type>()?;
        if col.is_null(row) {
            return None;
        }
        let id = col.value(row);
        let names = batch
            .schema()
            .field_with_name(name)
            .ok()
            .and_then(crate::schema::class_names)
            .unwrap_or_default();
        Some(match names.get(id as usize) {
            Some(n) => format!("{id} ({n})"),
            None => id.to_string(),
        })
    };
    if let Some(l) = class("label") {
        parts.push(format!("label {l}"));
    }
    if let Some(mode) = batch
        .column_by_name("mix_mode")
        .and_then(|c| c.as_string_opt::<i32>().map(|c| c.value(row).to_string()))
        && mode != "none"
    {
        let lam = batch
            .column_by_name("lam")
            .and_then(|c| {
                c.as_primitive_opt::<arrow::datatypes::Float32Type>()
                    .map(|c| c.value(row))
            })
            .unwrap_or(1.0);
        parts.push(format!(
            "{mode} lam {lam:.3} with label {}",
            class("label_b").unwrap_or_default()
        ));
    }
    if let Some(img) = batch
        .column_by_name("image")
        .and_then(|c| c.as_struct_opt().cloned())
    {
        let bytes = img.column(0).as_binary::<i32>().value(row);
        let dims = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok());
        match dims {
            Some((w, h)) => parts.push(format!("image {w}x{h} ({} bytes)", bytes.len())),
            None => parts.push(format!("image ({} bytes)", bytes.len())),
        }
    }
    let u32_of = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<UInt32Type>().map(|c| c.value(row)))
    };
    if let (Some(rate), Some(n)) = (u32_of("sample_rate"), u32_of("num_samples")) {
        let stored = batch
            .column_by_name("audio")
            .and_then(|c| c.as_struct_opt().cloned())
            .map(|a| match a.is_null(row) {
                // A SpecAugment copy: the WAV is on its original row.
                true => ", its WAV on its original row".to_string(),
                false => format!(
                    ", {} bytes of WAV",
                    a.column(0).as_binary::<i32>().value(row).len()
                ),
            })
            .unwrap_or_default();
        parts.push(format!(
            "audio {:.2} s at {rate} Hz{stored}",
            n as f64 / rate.max(1) as f64
        ));
    }
    if let (Some(mel), Some(frames)) = (
        batch
            .column_by_name("mel")
            .and_then(|c| c.as_list_opt::<i32>().cloned()),
        u32_of("mel_frames"),
    ) {
        parts.push(format!("mel [{}x{frames}]", mel.value(row).len()));
    }
    if u32_of("augment").is_some_and(|k| k > 0) && batch.column_by_name("freq_masks").is_some() {
        let pairs = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_list_opt::<i32>().cloned())
                .map(|l| {
                    let v = l.value(row);
                    let v = v
                        .as_fixed_size_list()
                        .values()
                        .as_primitive::<UInt32Type>()
                        .clone();
                    v.values()
                        .chunks(2)
                        .map(|p| format!("{}+{}", p[0], p[1]))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        let warp = match (
            u32_of("warp_anchor"),
            batch
                .column_by_name("warp_shift")
                .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int32Type>().cloned()),
        ) {
            (Some(a), Some(w)) if !w.is_null(row) => format!("warp {a} by {}, ", w.value(row)),
            _ => String::new(),
        };
        parts.push(format!(
            "specaugment: {warp}freq masks [{}], time masks [{}]",
            pairs("freq_masks"),
            pairs("time_masks")
        ));
    }
    if let Some(t) = batch
        .column_by_name("text")
        .and_then(|c| c.as_string_opt::<i32>().cloned())
        .filter(|t| !t.is_null(row))
    {
        parts.push(format!("{:?}", t.value(row)));
    }
    for name in ["pixel_values", "image_features", "logits"] {
        if let Some(c) = batch.column_by_name(name) {
            // The sizes of nested fixed-size lists: [3x224x224], [1280].
            let mut dims = Vec::new();
            let mut ty = c.data_type().clone();
            while let arrow::datatypes::DataType::FixedSizeList(item, n) = ty {
                dims.push(n.to_string());
                ty = item.data_type().clone();
            }
            parts.push(format!("{name} [{}]", dims.join("x")));
        }
    }
    if let Some(top) = batch
        .column_by_name("top_classes")
        .and_then(|c| c.as_fixed_size_list_opt().cloned())
    {
        let v = top.value(row);
        let v = v.as_primitive::<arrow::datatypes::Int64Type>();
        parts.push(format!(
            "top {:?}",
            v.values().iter().take(5).collect::<Vec<_>>()
        ));
    }
    format!("  {id}: {}", parts.join(", "))
}

fn describe_row(
    batch: &RecordBatch,
    row: usize,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> String {
    let id = batch
        .column_by_name("sample_id")
        .and_then(|c| c.as_string_opt::<i32>().map(|c| c.value(row).to_string()))
        .unwrap_or_default();
    if batch.column_by_name("path").is_some() && batch.column_by_name("input_ids").is_none() {
        return describe_media_row(batch, row, &id);
    }
    let window = batch
        .column_by_name("window")
        .map(|c| c.as_primitive::<UInt32Type>().value(row))
        .unwrap_or(0);
    let ids: Vec<u32> = batch
        .column_by_name("input_ids")
        .map(|c| {
            let l = c.as_list::<i32>().value(row);
            l.as_primitive::<UInt32Type>().values().to_vec()
        })
        .unwrap_or_default();
    let text = match tokenizer {
        Some(t) => t
            .decode(&ids, false)
            .unwrap_or_else(|e| format!("<cannot decode: {e}>")),
        None => "<no tokenizer.json to decode with>".to_string(),
    };
    let mut text: String = text.chars().take(200).collect();
    if text.len() >= 200 {
        text.push_str("...");
    }
    let head: Vec<String> = ids.iter().take(12).map(|i| i.to_string()).collect();
    let string_of = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .and_then(|c| (!arrow::array::Array::is_null(c, row)).then(|| c.value(row).to_string()))
    };
    // augment_text's provenance.
    let made = match (string_of("augmentation"), string_of("augmented_from")) {
        (Some(how), Some(from)) => {
            let note = string_of("augment_note").map_or(String::new(), |n| format!(" ({n})"));
            format!("\n    {how} copy of {from}{note}")
        }
        _ => String::new(),
    };
    format!(
        "  {id} [window {window}] {} tokens: [{}{}]\n    {text:?}{made}",
        ids.len(),
        head.join(", "),
        if ids.len() > 12 { ", ..." } else { "" }
    )
}
