//! Every example pipeline in `pipelines/`, run at 1 and at 4 threads: the
//! sample invariant holds, both runs give the same bytes, and those bytes are
//! the ones pinned in `tests/golden/examples.sha256` (the SHA-256 of every
//! file of each finished dataset). A change of layout or code that is meant
//! to keep behaviour keeps this file as it is; a change meant to alter the
//! output regenerates it with `KILN_BLESS=1 cargo nextest run --test
//! examples` and says why in its commit.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// `train.toml` is `kiln train`'s file (tests/train.rs runs it).
const NOT_PIPELINES: [&str; 1] = ["train.toml"];

const GOLDEN: &str = "tests/golden/examples.sha256";

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
    for line in text.lines().filter(|l| !l.is_empty()) {
        let pipeline = line.split(' ').next().unwrap().to_string();
        pinned.entry(pipeline).or_default().push(line.to_string());
    }
    if std::env::var_os("KILN_BLESS").is_some() {
        bless(&golden, name, &runs[0]);
        return;
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
        .filter(|l| !l.is_empty() && l.split(' ').next() != Some(name))
        .map(str::to_string)
        .collect();
    all.extend(lines.iter().cloned());
    all.sort();
    std::fs::write(golden, all.join("\n") + "\n").unwrap();
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
                    assert!(listed.contains(&name.as_str()), "pipelines/{name} has no test in tests/examples.rs");
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
    text_sql: "text_sql.toml",
}
