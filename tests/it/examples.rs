//! Every example pipeline in `pipelines/`, run at 1 and at 4 threads: the
//! sample invariant holds, both runs give the same bytes, and those bytes are
//! the ones pinned in `tests/golden/examples.sha256` (the SHA-256 of every
//! file of each finished dataset). The image, audio and multimodal examples
//! also have their rows pinned in `tests/golden/NAME.tsv`, readable in a
//! diff: strings and integers as they are, lists of numbers by length, sum
//! and first values to three digits, bytes by length. A change of layout or
//! code that is meant to keep behaviour keeps these files as they are; a
//! change meant to alter the output regenerates them with `KILN_BLESS=1
//! cargo nextest run examples::` and says why in its commit.
//!
//! Float outputs (EfficientNet features from ONNX Runtime, FFTs, SIMD
//! resizing) may differ in their last bits on a CPU with other vector
//! instructions, which those libraries pick at run time. The SHA-256 of the
//! image and audio examples are therefore checked where the CPU has the
//! instructions recorded in the golden file's first line; elsewhere their
//! rounded rows are. Text examples are checked byte for byte everywhere.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};

use crate::common::*;

/// `kiln train`'s files (tests/train.rs and tests/train_compress.rs run
/// them).
const NOT_PIPELINES: [&str; 5] = [
    "train.toml",
    "train_qat.toml",
    "train_prune.toml",
    "train_distill.toml",
    "train_compress.toml",
];

const GOLDEN: &str = "tests/golden/examples.sha256";

/// Examples whose rows are pinned, readable, in `tests/golden/NAME.tsv`.
const ROW_GOLDENS: [&str; 4] = [
    "image_features",
    "audio_specaug",
    "multimodal",
    "text_filtered",
];

/// The vector instructions the float libraries choose between at run time.
fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = Vec::new();
        for (name, on) in [
            ("sse4.1", std::arch::is_x86_feature_detected!("sse4.1")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
            (
                "avx512vnni",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
        ] {
            if on {
                f.push(name);
            }
        }
        format!("x86_64 {}", f.join(" "))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

const CPU_LINE: &str = "# cpu: ";

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `PIPELINE FILE SHA256` lines for one finished dataset. The plan's hash
/// (the manifest's `plan`, and its first 16 digits as `state.json`'s
/// `_fingerprint`) covers the inputs' sizes and modification times, so that
/// a changed input is never resumed: it is replaced by `-` in the JSON files
/// before hashing, so that a fresh checkout gives the same digests.
fn digest_lines(name: &str, dir: &Path) -> Vec<String> {
    let plan = manifest(dir)["plan"].as_str().unwrap().to_string();
    dataset_files(dir)
        .into_iter()
        .map(|(file, bytes)| {
            let bytes = match file.ends_with(".json") {
                true => String::from_utf8(bytes)
                    .unwrap()
                    .replace(&plan, "-")
                    .replace(&plan[..16], "-")
                    .into_bytes(),
                false => bytes,
            };
            format!("{name} {file} {}", sha256(&bytes))
        })
        .collect()
}

fn check_example(name: &str) {
    let out = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for threads in ["1", "4"] {
        let dest = out.path().join(format!("t{threads}"));
        run_example(name, &dest, threads);
        let t = &manifest(&dest)["totals"];
        let g = |k: &str| t[k].as_u64().unwrap();
        assert!(g("samples_out") > 0, "{name} wrote no samples");
        assert_eq!(
            g("samples_in"),
            g("samples_out") + g("rejected") + g("filtered"),
            "{name}: samples in = out + rejected + filtered"
        );
        runs.push(digest_lines(name, &dest));
    }
    assert_eq!(
        runs[0], runs[1],
        "{name}: 1 and 4 threads give the same bytes"
    );

    let golden = root().join(GOLDEN);
    let text = std::fs::read_to_string(&golden).unwrap_or_default();
    let mut pinned: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let pinned_cpu = text
        .lines()
        .find_map(|l| l.strip_prefix(CPU_LINE))
        .unwrap_or_default()
        .to_string();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let pipeline = line.split(' ').next().unwrap().to_string();
        pinned.entry(pipeline).or_default().push(line.to_string());
    }
    let stem = name.trim_end_matches(".toml");
    let rows = ROW_GOLDENS
        .contains(&stem)
        .then(|| rows_dump(&out.path().join("t1")));
    let rows_golden = root().join(format!("tests/golden/{stem}.tsv"));
    if std::env::var_os("KILN_BLESS").is_some() {
        bless(&golden, name, &runs[0]);
        if let Some(rows) = &rows {
            std::fs::write(&rows_golden, rows).unwrap();
        }
        return;
    }
    if let Some(rows) = &rows {
        let want =
            std::fs::read_to_string(&rows_golden).expect("golden rows (KILN_BLESS=1 writes them)");
        assert!(
            want == *rows,
            "{name}: the rows differ from {}; rerun with KILN_BLESS=1 if the change is meant, and say why",
            rows_golden.display()
        );
        if pinned_cpu != cpu_features() && !stem.starts_with("text") {
            eprintln!(
                "{name}: this CPU ({}) is not the one the digests were recorded on ({pinned_cpu}): the rounded rows were checked, not the bytes",
                cpu_features()
            );
            return;
        }
    }
    let want = pinned.get(name).cloned().unwrap_or_default();
    assert!(
        want == runs[0],
        "{name}: the output differs from {GOLDEN}:\nwant {want:#?}\ngot  {:#?}\nrerun with KILN_BLESS=1 if the change is meant, and say why",
        runs[0]
    );
}

/// Replace `name`'s lines in the golden file, under an exclusive lock on it.
fn bless(golden: &Path, name: &str, lines: &[String]) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .open(golden)
        .unwrap();
    f.lock().unwrap();
    let text = std::fs::read_to_string(golden).unwrap();
    let mut all: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.split(' ').next() != Some(name))
        .map(str::to_string)
        .collect();
    all.extend(lines.iter().cloned());
    all.sort();
    let head = format!("{CPU_LINE}{}\n", cpu_features());
    std::fs::write(golden, head + &all.join("\n") + "\n").unwrap();
}

/// A dataset's rows, one a line, `column=value` tab-separated.
fn rows_dump(dir: &Path) -> String {
    let mut out = String::new();
    for batch in read_dataset(dir) {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| format!("{}={}", f.name(), cell(c.as_ref(), row)))
                .collect();
            out.push_str(&cells.join("\t"));
            out.push('\n');
        }
    }
    out
}

/// One value: strings and integers as they are, floats to three digits,
/// lists of numbers by length, sum and first values, bytes by length.
fn cell(col: &dyn Array, row: usize) -> String {
    if col.is_null(row) {
        return "null".into();
    }
    match col.data_type() {
        DataType::Utf8 => {
            let s = col.as_string::<i32>().value(row);
            let short: String = s.chars().take(40).collect();
            short.escape_debug().to_string()
        }
        DataType::Binary => format!("<{} bytes>", col.as_binary::<i32>().value(row).len()),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let mut v = Vec::new();
            numbers(&col.slice(row, 1), &mut v);
            round(v[0])
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
            let mut v = Vec::new();
            numbers(&col.slice(row, 1), &mut v);
            let head: Vec<String> = v.iter().take(3).map(|x| round(*x)).collect();
            format!(
                "[n={} sum={} head={}]",
                v.len(),
                round(v.iter().sum()),
                head.join(",")
            )
        }
        DataType::Struct(_) => {
            let s = col.as_struct();
            let parts: Vec<String> = s
                .fields()
                .iter()
                .zip(s.columns())
                .map(|(f, c)| format!("{}:{}", f.name(), cell(c.as_ref(), row)))
                .collect();
            format!("{{{}}}", parts.join(";"))
        }
        _ => arrow::util::display::array_value_to_string(col, row).unwrap(),
    }
}

/// Every number under `col` (lists flattened), as f64.
fn numbers(col: &dyn Array, out: &mut Vec<f64>) {
    match col.data_type() {
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            for i in (0..l.len()).filter(|&i| !l.is_null(i)) {
                numbers(l.value(i).as_ref(), out);
            }
        }
        DataType::FixedSizeList(..) => {
            let l = col.as_fixed_size_list();
            for i in (0..l.len()).filter(|&i| !l.is_null(i)) {
                numbers(l.value(i).as_ref(), out);
            }
        }
        _ => {
            let c = arrow::compute::cast(col, &DataType::Float64).unwrap();
            out.extend(
                c.as_primitive::<Float64Type>()
                    .iter()
                    .map(|v| v.unwrap_or(f64::NAN)),
            );
        }
    }
}

/// Three significant digits; `0` for values that round to nothing.
fn round(x: f64) -> String {
    if x.abs() < 1e-6 {
        return "0".into();
    }
    format!("{x:.2e}")
}

macro_rules! examples {
    ($($test:ident: $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_example($file);
            }
        )*

        #[test]
        fn every_example_pipeline_is_listed() {
            let listed = [$($file,)*];
            for entry in std::fs::read_dir(root().join("pipelines")).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                if name.ends_with(".toml") && !NOT_PIPELINES.contains(&name.as_str()) {
                    assert!(listed.contains(&name.as_str()), "pipelines/{name} has no test in tests/it/examples.rs");
                }
            }
        }
    };
}

examples! {
    audio_specaug: "audio_specaug.toml",
    image_features: "image_features.toml",
    image_mix: "image_mix.toml",
    image_text: "image_text.toml",
    multimodal: "multimodal.toml",
    text: "text.toml",
    text_augment: "text_augment.toml",
    text_chunked: "text_chunked.toml",
    text_filtered: "text_filtered.toml",
    text_sql: "text_sql.toml",
}
