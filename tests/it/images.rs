//! The image path end to end: features that do not depend on batching or
//! threads, byte-identical mixed datasets, tar and table rejects, and
//! configurations refused before any data is read.
//!
//! Needs the models and ONNX Runtime that `scripts/setup.sh` installs.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;

fn fixture(rel: &str) -> String {
    fixture_path(&format!("images/{rel}"))
}

/// Run `pipeline` (without its `[output]`) in `s` into the folder `name`.
fn build(s: &Scratch, name: &str, pipeline: &str) -> std::path::PathBuf {
    build_in(s, name, pipeline, &[])
}

/// `image_features` of every sample, by sample id, as raw bits.
fn features(dir: &Path) -> BTreeMap<String, Vec<u32>> {
    let mut out = BTreeMap::new();
    for b in read_dataset(dir) {
        let ids = b.column_by_name("sample_id").unwrap().as_string::<i32>();
        let f = b
            .column_by_name("image_features")
            .unwrap()
            .as_fixed_size_list();
        for r in 0..b.num_rows() {
            let v = f.value(r);
            let v = v.as_primitive::<Float32Type>();
            out.insert(
                ids.value(r).to_string(),
                v.values().iter().map(|x| x.to_bits()).collect(),
            );
        }
    }
    out
}

fn features_pipeline(out: &Path, batch_size: usize, task_bytes: u64, batch_rows: usize) -> String {
    format!(
        r#"
[[inputs]]
path = "{folder}"

[[stages]]
type = "decode_image"

[[stages]]
type = "resize_image"
size = 224
crop = 224

[[stages]]
type = "image_features"
batch_size = {batch_size}

[output]
path = "{out}"

[plan]
task_bytes = {task_bytes}
batch_rows = {batch_rows}
"#,
        folder = fixture("folder"),
        out = out.display()
    )
}

/// The inference queue gathers jobs from every task into batches of up to
/// `batch_size` images: an image's features must not depend on the batch it
/// met (64: all 13 images in one call; 7: jobs of 4 images from three tasks
/// gathered; 1: an image a call).
#[test]
fn features_do_not_depend_on_batch_size_or_threads() {
    let s = Scratch::new();
    let mut runs = Vec::new();
    for (i, (batch, threads, task_bytes, rows)) in [
        (64, "1", 1 << 20, 64),
        (1, "2", 8000, 4),
        (7, "3", 20000, 4),
    ]
    .into_iter()
    .enumerate()
    {
        let out = s.path(&format!("out{i}"));
        let p = s.write(
            &format!("p{i}.toml"),
            features_pipeline(&out, batch, task_bytes, rows),
        );
        let o = s.kiln(&["run", p.to_str().unwrap(), "--threads", threads, "-q"]);
        assert_ok(&o);
        runs.push(features(&out));
    }
    assert_eq!(runs[0].len(), 13);
    assert!(runs[0].values().all(|v| v.len() == 1280));
    assert!(
        runs[1] == runs[0],
        "batch size 1, 2 threads: other features"
    );
    assert!(
        runs[2] == runs[0],
        "batch size 7, 3 threads: other features"
    );
}

#[test]
fn mixed_dataset_is_byte_identical_at_any_thread_count() {
    let s = Scratch::new();
    let mut shas = Vec::new();
    for threads in ["1", "4"] {
        let out = s.path(&format!("mix{threads}"));
        let out_shas = run_example("image_mix.toml", &out, threads);
        let m = manifest(&out);
        shas.push(out_shas);
        // 10 tar samples: 8 good with 2 copies each, 2 rejected.
        assert_eq!(m["totals"]["samples_in"], 10);
        assert_eq!(m["totals"]["samples_out"], 8);
        assert_eq!(m["totals"]["rows"], 24);
        let rejects = rejects(&out);
        let kinds: Vec<&str> = rejects.iter().map(|r| r.2.as_str()).collect();
        assert_eq!(kinds.len(), 2, "{rejects:?}");
        assert!(
            rejects
                .iter()
                .any(|r| r.0.ends_with("shard-000001.tar:sample000008") && r.2 == "no_image"),
            "{rejects:?}"
        );
        assert!(
            rejects
                .iter()
                .any(|r| r.0.ends_with("shard-000001.tar:sample000007")
                    && r.1.starts_with("decode_image")),
            "{rejects:?}"
        );
    }
    assert_eq!(shas[0], shas[1]);
}

#[test]
fn table_join_rejects_missing_and_bad_files_and_keeps_captions() {
    let s = Scratch::new();
    let out = s.path("it");
    let o = kiln()
        .current_dir(root())
        .args([
            "run",
            "pipelines/image_text.toml",
            "--output",
            out.to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    let rejects = rejects(&out);
    let kinds: Vec<(&str, &str)> = rejects
        .iter()
        .map(|r| (r.1.as_str(), r.2.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("read_image", "missing_file"),
            ("decode_image", "unknown_format"),
        ],
        "{rejects:?}"
    );
    let batches = read_dataset(&out);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 13);
    for b in &batches {
        let text = b.column_by_name("text").unwrap().as_string::<i32>();
        let ids = b.column_by_name("input_ids").unwrap().as_list::<i32>();
        for r in 0..b.num_rows() {
            assert!(!text.value(r).is_empty());
            assert!(!ids.value(r).is_empty());
        }
        assert_eq!(b.column_by_name("image").unwrap().null_count(), 0);
    }
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset_info.json")).unwrap()).unwrap();
    assert_eq!(info["features"]["image"]["_type"], "Image");
    assert_eq!(
        info["features"]["label"]["names"],
        serde_json::json!(["bird", "cat", "dog"])
    );
}

#[test]
fn cuda_is_used_only_when_it_loads() {
    // On a host without CUDA, `auto` runs on CPU and says so.
    let s = Scratch::new();
    let out = s.path("out");
    let p = s.write("p.toml", features_pipeline(&out, 8, 1 << 20, 4));
    let o = s.kiln(&["run", p.to_str().unwrap()]);
    assert_ok(&o);
    let e = stderr(&o);
    let gpu = std::path::Path::new("/dev/nvidia0").exists();
    if !gpu {
        assert!(e.contains("on CPUExecutionProvider"), "{e}");
    } else {
        assert!(e.contains("ExecutionProvider"), "{e}");
    }
}

#[test]
fn killed_image_run_resumes_to_the_same_bytes() {
    let s = Scratch::new();
    let pipeline = format!(
        r#"
seed = 9

[[inputs]]
path = "{folder}"

[[stages]]
type = "decode_image"

[[stages]]
type = "resize_image"
size = 40
crop = 32
crop_mode = "random"

[[stages]]
type = "mix"
copies = 1
cutmix_alpha = 1.0

[[stages]]
type = "encode_image"

[output]
path = "unused"
max_shard_rows = 5

[plan]
task_bytes = 3000
batch_rows = 2
"#,
        folder = fixture("folder")
    );
    s.write("p.toml", pipeline);
    assert_ok(&s.kiln(&["run", "p.toml", "-q", "--output", "reference"]));
    let out = kill_after_tasks_then_rerun(&s, "killed", 2);
    assert_same_dataset(&s.path("reference"), &out);
    let m = manifest(&out);
    assert_eq!(m["totals"]["samples_in"], 13);
    assert_eq!(m["totals"]["rows"], 26);
}

#[test]
fn tar_json_members_fill_extra_columns_and_txt_the_caption() {
    let s = Scratch::new();
    let out = build(
        &s,
        "out",
        &format!(
            "[[inputs]]\npath = \"{}\"\ncolumns = [\"caption\"]\n\n",
            fixture("shard-000000.tar")
        ),
    );
    let batches = read_dataset(&out);
    let b = &batches[0];
    assert_eq!(b.num_rows(), 5);
    let text = b.column_by_name("text").unwrap().as_string::<i32>();
    let caption = b.column_by_name("caption").unwrap().as_string::<i32>();
    let label = b
        .column_by_name("label")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    for r in 0..5 {
        assert_eq!(
            text.value(r),
            caption.value(r),
            "the .txt and the .json caption agree"
        );
        assert!((0..3).contains(&label.value(r)));
    }
    let ids = b.column_by_name("sample_id").unwrap().as_string::<i32>();
    assert!(
        ids.value(0).ends_with("shard-000000.tar:sample000000"),
        "{}",
        ids.value(0)
    );
}

#[test]
fn csv_and_parquet_tables_join_their_images_and_big_members_are_rejected() {
    use std::sync::Arc;
    let s = Scratch::new();
    // The CSV table as it is, and the same rows as Parquet.
    let csv = std::fs::read_to_string(fixture("captions.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let col = |i: usize| -> arrow::array::ArrayRef {
        Arc::new(arrow::array::StringArray::from(
            rows.iter().map(|r| r[i].to_string()).collect::<Vec<_>>(),
        ))
    };
    let batch = arrow::array::RecordBatch::try_from_iter([
        ("file", col(0)),
        ("caption", col(1)),
        ("label", col(2)),
    ])
    .unwrap();
    let pq = s.path("captions.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&pq).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let root = fixture("");
    for (name, table) in [
        ("csv", fixture("captions.csv")),
        ("pq", pq.display().to_string()),
    ] {
        let out = build(
            &s,
            name,
            &format!(
                r#"
[[inputs]]
path = "{table}"
image_column = "file"
image_root = "{root}"
caption_column = "caption"
label_column = "label"
classes = ["bird", "cat", "dog"]

[[stages]]
type = "decode_image"
"#
            ),
        );
        let m = manifest(&out);
        assert_eq!(m["totals"]["samples_out"], 13, "{name}");
        assert_eq!(m["totals"]["rejected"], 0, "{name}");
    }
    // Tar members over limits.max_file_bytes are rejected unread, one
    // reject a sample.
    let out = build(
        &s,
        "small",
        &format!(
            "[[inputs]]\npath = \"{}\"\n\n\n[limits]\nmax_file_bytes = 500\n",
            fixture("shard-000000.tar")
        ),
    );
    let kinds: Vec<String> = rejects(&out).into_iter().map(|r| r.2).collect();
    let m = manifest(&out);
    // The JPEGs are over 500 bytes, the PNGs under.
    assert_eq!(kinds, vec!["file_too_large"; 3]);
    assert_eq!(m["totals"]["samples_out"], 2);
}

/// Regression: each image file was read as a batch of its own, so stages
/// saw one image at a time and mixing paired every image with itself.
#[test]
fn image_files_share_batches_so_mixing_finds_partners() {
    let s = Scratch::new();
    let out = build(
        &s,
        "out",
        &format!(
            "[[inputs]]\npath = \"{}\"\n\n[[stages]]\ntype = \"decode_image\"\n\n[[stages]]\ntype = \"resize_image\"\nsize = 16\ncrop = 16\n\n[[stages]]\ntype = \"mix\"\ncopies = 2\n\n",
            fixture("folder")
        ),
    );
    let mut mixed = 0;
    for b in read_dataset(&out) {
        let ids = b.column_by_name("sample_id").unwrap().as_string::<i32>();
        let partner = b.column_by_name("mix_partner").unwrap().as_string::<i32>();
        for r in 0..b.num_rows() {
            if partner.is_valid(r) {
                mixed += 1;
                let own = ids.value(r).split('#').next().unwrap();
                assert_ne!(partner.value(r), own, "a sample mixed with itself");
            }
        }
    }
    assert_eq!(mixed, 26, "every copy is mixed (prob = 1)");
}

fn tar_of(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// Regression: a batch that finished no sample (here: batches of one
/// sample, the first rejected) ended the shard, losing the rest unseen.
/// And a key whose members are not together is one sample, not two.
#[test]
fn tar_reads_past_rejected_samples_and_refuses_split_keys() {
    let s = Scratch::new();
    let png = std::fs::read(fixture("bad/good.png")).unwrap();
    let shard = s.path("shard.tar");
    tar_of(
        &shard,
        &[
            ("a.cls", b"99\n".to_vec()),
            ("a.png", png.clone()),
            ("b.png", png.clone()),
            ("c.png", png.clone()),
            ("b.txt", b"late".to_vec()),
            ("d.png", png.clone()),
        ],
    );
    let out = build(
        &s,
        "out",
        &format!(
            "[[inputs]]\npath = \"{}\"\nclasses = [\"x\", \"y\"]\n\n\n[plan]\nbatch_rows = 1\n",
            shard.display()
        ),
    );
    let m = manifest(&out);
    let kinds: Vec<String> = rejects(&out).into_iter().map(|r| r.2).collect();
    assert_eq!(kinds, ["unknown_label", "duplicate_key"]);
    assert_eq!(m["totals"]["samples_out"], 3, "b, c and d");
    assert_eq!(m["totals"]["samples_in"], 5);
}

#[test]
fn a_caption_column_named_text_is_read_as_the_caption() {
    let s = Scratch::new();
    let rows: String = [
        ("bird/bird_0.jpg", ", \"who\": \"me\""),
        ("cat/cat_1.png", ""),
    ]
    .iter()
    .map(|(f, extra)| {
        format!(
            "{{\"file\": \"{}\", \"text\": \"a photo of {f}\"{extra}}}\n",
            fixture(&format!("folder/{f}"))
        )
    })
    .collect();
    s.write("t.jsonl", rows);
    let out = build(
        &s,
        "out",
        "[[inputs]]\npath = \"t.jsonl\"\nimage_column = \"file\"\ncaption_column = \"text\"\ncolumns = [\"who\"]\n",
    );
    let b = &read_dataset(&out)[0];
    let text = b.column_by_name("text").unwrap().as_string::<i32>();
    let path = b.column_by_name("path").unwrap().as_string::<i32>();
    assert_eq!(b.num_rows(), 2);
    assert!(
        text.value(1).starts_with("a photo of cat/cat_1.png"),
        "{}",
        text.value(1)
    );
    assert!(
        path.value(1).ends_with("folder/cat/cat_1.png"),
        "{}",
        path.value(1)
    );
    // The table's extra columns come along, null where a row lacks one.
    let who = b.column_by_name("who").unwrap().as_string::<i32>();
    assert_eq!(who.value(0), "me");
    assert!(who.is_null(1));
}

#[test]
fn a_tokenizer_is_trained_on_the_captions_of_tar_shards() {
    let s = Scratch::new();
    let out = build(
        &s,
        "out",
        &format!(
            r#"
[[inputs]]
path = "{tars}"

[[stages]]
type = "decode_image"

[[stages]]
type = "tokenize"

[stages.train]
vocab_size = 300
min_frequency = 1
"#,
            tars = fixture("shard-*.tar"),
        ),
    );
    assert!(out.join("tokenizer.json").exists());
    let m = manifest(&out);
    assert_eq!(m["totals"]["samples_out"], 8);
    assert!(m["totals"]["tokens"].as_u64().unwrap() > 8);
}

/// Every row's path and encoded `image` bytes, in dataset order.
fn images(dir: &Path) -> Vec<(String, Vec<u8>)> {
    read_dataset(dir)
        .iter()
        .flat_map(|b| {
            let paths = b.column_by_name("path").unwrap().as_string::<i32>();
            let image = b.column_by_name("image").unwrap().as_struct();
            let bytes = image.column_by_name("bytes").unwrap().as_binary::<i32>();
            (0..b.num_rows())
                .map(|i| (paths.value(i).to_string(), bytes.value(i).to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An `encode_image` right after a decode (or the resize it runs) runs in
/// the decode's pass over each image, in buffers kept between images. It
/// writes what it writes on its own: here after a second resize, which
/// leaves a 32 x 32 crop as it is but keeps the encode a stage apart.
#[test]
fn an_encode_inside_the_decode_writes_the_bytes_of_one_on_its_own() {
    let s = Scratch::new();
    for format in ["png", "jpeg"] {
        let pipeline = |second: &str| {
            format!(
                "[[inputs]]\npath = \"{}\"\nformat = \"images\"\n\n[[stages]]\ntype = \"decode_image\"\n\n[[stages]]\ntype = \"resize_image\"\nsize = 40\ncrop = 32\n{second}\n[[stages]]\ntype = \"encode_image\"\nformat = \"{format}\"\n",
                fixture("folder")
            )
        };
        let fused = build(&s, &format!("fused-{format}"), &pipeline(""));
        let apart = build(
            &s,
            &format!("apart-{format}"),
            &pipeline("\n[[stages]]\ntype = \"resize_image\"\nsize = 32\n"),
        );
        let (a, b) = (images(&fused), images(&apart));
        assert_eq!(a.len(), 13, "{format}");
        assert!(a == b, "{format}: the fused encode wrote other bytes");
    }
}

/// `draft = true` decodes JPEGs at a reduced DCT scale: the folder's images
/// come out with the sizes of full decoding, the JPEGs big enough to scale
/// with other pixels, the rest with the same; without a resize right after
/// the decode there is no scale to choose, and the pipeline is refused.
#[test]
fn draft_keeps_the_output_sizes_and_needs_a_resize() {
    let s = Scratch::new();
    let pipeline = |draft: &str| {
        format!(
            "[[inputs]]\npath = \"{}\"\nformat = \"images\"\n\n[[stages]]\ntype = \"decode_image\"\n{draft}\n[[stages]]\ntype = \"resize_image\"\nsize = 20\n\n[[stages]]\ntype = \"encode_image\"\n",
            fixture("folder")
        )
    };
    let sizes = |dir: &Path| -> Vec<(String, (u32, u32), Vec<u8>)> {
        images(dir)
            .into_iter()
            .map(|(path, bytes)| {
                let img = image::load_from_memory(&bytes).unwrap();
                (path, (img.width(), img.height()), bytes)
            })
            .collect()
    };
    let full = sizes(&build(&s, "full", &pipeline("")));
    let draft = sizes(&build(&s, "draft", &pipeline("draft = true\n")));
    assert_eq!(full.len(), 13);
    let mut scaled = 0;
    for ((path, size, a), (p, s, b)) in full.iter().zip(&draft) {
        assert_eq!((path, size), (p, s));
        // 64 x 48 and larger JPEGs decode at 1/2 for a shorter side of 20.
        let jpeg = path.ends_with(".jpg") && path != "cat/rotated.jpg";
        assert_eq!(a != b, jpeg, "{path}");
        scaled += jpeg as usize;
    }
    assert_eq!(scaled, 4);
    let err = refused(&format!(
        "[[inputs]]\npath = \"{}\"\nformat = \"images\"\n\n[[stages]]\ntype = \"decode_image\"\ndraft = true\n\n[[stages]]\ntype = \"encode_image\"\n\n[output]\npath = \"out\"\n",
        fixture("folder")
    ));
    assert!(err.contains("stages[0].draft"), "{err}");
    assert!(err.contains("resize_image right after"), "{err}");
}
